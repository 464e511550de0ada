//! Flow logs: one JSON line per flow per interval and when a flow ends, with the fields of a
//! VPC flow log. The packet path only pushes fixed-size records into a ring allocated up front
//! (a full ring counts the record as lost); `write_out`, called from the VMM's timer, drains the
//! ring into a bounded byte buffer and writes it with non-blocking writes. Nothing waits on the
//! file: what cannot be written stays buffered, and records beyond the buffer are lost and
//! counted. The guest drives how many flows there are, so the volume written is bounded too:
//! at most `BUDGET_BYTES` and `BUDGET_RECORDS` per `BUDGET_WINDOW_MS`; records beyond the
//! budget are suppressed and counted (`records_suppressed`).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::net_types::{Addr, Direction};

/// Records the ring holds between two timer runs.
pub(crate) const RING_CAPACITY: usize = 8_192;
/// Bytes of formatted lines kept while the file does not accept them.
const PENDING_LIMIT: usize = 1 << 20;
/// The window over which the flow-log volume is bounded.
const BUDGET_WINDOW_MS: u64 = 60_000;
/// Bytes of flow-log lines per window (8 MiB a minute: at most ~11 GiB a day).
const BUDGET_BYTES: u64 = 8 << 20;
/// Flow-log lines per window.
const BUDGET_RECORDS: u64 = 32_768;

/// How much may still be written in the current window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Budget {
    bytes_per_window: u64,
    records_per_window: u64,
    window_start_ms: u64,
    bytes_used: u64,
    records_used: u64,
}

impl Budget {
    fn new(bytes_per_window: u64, records_per_window: u64) -> Budget {
        Budget {
            bytes_per_window,
            records_per_window,
            window_start_ms: 0,
            bytes_used: 0,
            records_used: 0,
        }
    }

    /// Opens a new window when the current one is over.
    fn refill(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.window_start_ms) >= BUDGET_WINDOW_MS {
            self.window_start_ms = now_ms;
            self.bytes_used = 0;
            self.records_used = 0;
        }
    }

    /// Takes one line of `len` bytes from the budget, if it fits.
    fn take(&mut self, len: usize) -> bool {
        let bytes = self.bytes_used + len as u64;
        if self.records_used >= self.records_per_window || bytes > self.bytes_per_window {
            return false;
        }
        self.bytes_used = bytes;
        self.records_used += 1;
        true
    }
}

/// Errors of the flow-log file.
#[derive(Debug, thiserror::Error)]
pub enum FlowLogError {
    /// The file cannot be opened for appending.
    #[error("Cannot open the flow log {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A write failed for another reason than a full pipe or socket.
    #[error("Cannot write the flow log")]
    Write(#[source] io::Error),
}

/// ACCEPT or REJECT, as in VPC flow logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum FlowAction {
    #[serde(rename = "ACCEPT")]
    Accept,
    #[serde(rename = "REJECT")]
    Reject,
}

/// One record, in the originator's orientation; times in milliseconds since the firewall's
/// clock epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FlowRecord {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub direction: Direction,
    pub packets: u64,
    pub bytes: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub action: FlowAction,
}

#[derive(Serialize)]
struct FlowLine<'a> {
    iface: &'a str,
    direction: &'static str,
    srcaddr: std::net::IpAddr,
    dstaddr: std::net::IpAddr,
    srcport: u16,
    dstport: u16,
    protocol: u8,
    packets: u64,
    bytes: u64,
    start: u64,
    end: u64,
    action: FlowAction,
}

/// The log of one interface: the ring, the pending bytes and the file.
#[derive(Debug)]
pub(crate) struct FlowLog {
    iface: String,
    path: Option<PathBuf>,
    file: Option<File>,
    ring: VecDeque<FlowRecord>,
    pending: Vec<u8>,
    pending_records: u64,
    /// Unix time of the clock epoch, in milliseconds.
    unix_epoch_offset_ms: u64,
    budget: Budget,
    pub records_written: u64,
    pub records_lost: u64,
    /// Records dropped because the window's byte or record budget was spent.
    pub records_suppressed: u64,
}

fn open_append(path: &Path) -> Result<File, FlowLogError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| FlowLogError::Open {
            path: path.to_path_buf(),
            source,
        })
}

impl FlowLog {
    /// A log writing to `path`, or a disabled one that ignores records when `path` is None.
    pub fn open(
        iface: &str,
        path: Option<&Path>,
        unix_epoch_offset_ms: u64,
    ) -> Result<FlowLog, FlowLogError> {
        let file = path.map(open_append).transpose()?;
        let enabled = file.is_some();
        Ok(FlowLog {
            iface: iface.to_string(),
            path: path.map(Path::to_path_buf),
            file,
            ring: VecDeque::with_capacity(if enabled { RING_CAPACITY } else { 0 }),
            pending: Vec::with_capacity(if enabled { PENDING_LIMIT } else { 0 }),
            pending_records: 0,
            unix_epoch_offset_ms,
            budget: Budget::new(BUDGET_BYTES, BUDGET_RECORDS),
            records_written: 0,
            records_lost: 0,
            records_suppressed: 0,
        })
    }

    /// Switches to another file (a live update); keeps the ring and the counters.
    pub fn change_path(&mut self, path: Option<&Path>) -> Result<(), FlowLogError> {
        if path == self.path.as_deref() {
            return Ok(());
        }
        let file = path.map(open_append).transpose()?;
        if file.is_some() && self.file.is_none() {
            self.ring.reserve_exact(RING_CAPACITY);
            self.pending.reserve_exact(PENDING_LIMIT);
        }
        self.file = file;
        self.path = path.map(Path::to_path_buf);
        Ok(())
    }

    pub fn is_enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Whether the ring has room for `count` more records.
    pub fn has_room(&self, count: usize) -> bool {
        self.ring.len() + count <= RING_CAPACITY
    }

    /// Queues a record; never allocates (a full ring loses the record and counts it).
    pub fn push(&mut self, record: FlowRecord) {
        if !self.is_enabled() {
            return;
        }
        if self.ring.len() < RING_CAPACITY {
            self.ring.push_back(record);
        } else {
            self.records_lost += 1;
        }
    }

    /// Counts a record that could not even be formed (e.g. the reject table is full).
    pub fn count_lost(&mut self) {
        if self.is_enabled() {
            self.records_lost += 1;
        }
    }

    fn format(&mut self, record: &FlowRecord) {
        let line = FlowLine {
            iface: &self.iface,
            direction: match record.direction {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            },
            srcaddr: record.src.to_ip(),
            dstaddr: record.dst.to_ip(),
            srcport: record.src_port,
            dstport: record.dst_port,
            protocol: record.protocol,
            packets: record.packets,
            bytes: record.bytes,
            start: (self.unix_epoch_offset_ms + record.start_ms) / 1_000,
            end: (self.unix_epoch_offset_ms + record.end_ms) / 1_000,
            action: record.action,
        };
        let start = self.pending.len();
        if serde_json::to_writer(&mut self.pending, &line).is_err() {
            self.pending.truncate(start);
            self.records_lost += 1;
            return;
        }
        self.pending.push(b'\n');
        if self.budget.take(self.pending.len() - start) {
            self.pending_records += 1;
        } else {
            self.pending.truncate(start);
            self.records_suppressed += 1;
        }
    }

    /// Drains the ring and writes what the file accepts without blocking. Records stay in the
    /// ring while the buffer of formatted lines is full and the file does not take it; records
    /// beyond the budget of the window `now_ms` falls in are suppressed and counted.
    pub fn write_out(&mut self, now_ms: u64) -> Result<(), FlowLogError> {
        self.budget.refill(now_ms);
        loop {
            while self.pending.len() < PENDING_LIMIT {
                let Some(record) = self.ring.pop_front() else {
                    break;
                };
                self.format(&record);
            }
            let drained = self.write_pending()?;
            if !drained || self.ring.is_empty() {
                return Ok(());
            }
        }
    }

    /// Writes pending bytes until the file would block; true when nothing is left.
    fn write_pending(&mut self) -> Result<bool, FlowLogError> {
        let Some(file) = self.file.as_mut() else {
            self.records_lost += self.pending_records;
            self.pending_records = 0;
            self.pending.clear();
            return Ok(true);
        };
        let mut written = 0;
        let result = loop {
            if written == self.pending.len() {
                break Ok(());
            }
            match file.write(&self.pending[written..]) {
                Ok(0) => break Ok(()),
                Ok(count) => written += count,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => break Err(FlowLogError::Write(err)),
            }
        };
        let lines_written = self.pending[..written]
            .iter()
            .filter(|byte| **byte == b'\n')
            .count();
        self.records_written += lines_written as u64;
        self.pending_records -= lines_written as u64;
        self.pending.drain(..written);
        if let Err(err) = result {
            self.records_lost += self.pending_records;
            self.pending_records = 0;
            self.pending.clear();
            return Err(err);
        }
        Ok(self.pending.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(packets: u64) -> FlowRecord {
        FlowRecord {
            src: Addr::v4([172, 16, 0, 2]),
            dst: Addr::v4([1, 1, 1, 1]),
            src_port: 40_000,
            dst_port: 443,
            protocol: 6,
            direction: Direction::Egress,
            packets,
            bytes: packets * 100,
            start_ms: 1_000,
            end_ms: 61_000,
            action: FlowAction::Accept,
        }
    }

    #[test]
    fn records_become_json_lines_with_vpc_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let mut log = FlowLog::open("eth0", Some(&path), 1_700_000_000_000).unwrap();
        log.push(record(3));
        log.push(FlowRecord {
            action: FlowAction::Reject,
            ..record(1)
        });
        log.write_out(0).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["iface"], "eth0");
        assert_eq!(lines[0]["srcaddr"], "172.16.0.2");
        assert_eq!(lines[0]["dstport"], 443);
        assert_eq!(lines[0]["packets"], 3);
        assert_eq!(lines[0]["bytes"], 300);
        assert_eq!(lines[0]["start"], 1_700_000_001);
        assert_eq!(lines[0]["end"], 1_700_000_061);
        assert_eq!(lines[0]["action"], "ACCEPT");
        assert_eq!(lines[1]["action"], "REJECT");
        assert_eq!(log.records_written, 2);
    }

    #[test]
    fn a_full_ring_loses_and_counts_records_without_growing() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = FlowLog::open("eth0", Some(&dir.path().join("f")), 0).unwrap();
        let reserved = log.ring.capacity();
        for _ in 0..RING_CAPACITY + 5 {
            log.push(record(1));
        }
        assert_eq!(log.records_lost, 5);
        assert_eq!(log.ring.capacity(), reserved);
        log.write_out(0).unwrap();
        assert_eq!(log.records_written, RING_CAPACITY as u64);
    }

    #[test]
    fn a_pipe_nobody_reads_never_blocks_the_writer() {
        use std::os::fd::AsRawFd;
        let (_reader, writer) = io::pipe().unwrap();
        let path = PathBuf::from(format!("/proc/self/fd/{}", writer.as_raw_fd()));
        let mut log = FlowLog::open("eth0", Some(&path), 0).unwrap();
        for _ in 0..40 {
            for _ in 0..RING_CAPACITY {
                log.push(record(1));
            }
            log.write_out(0).unwrap();
        }
        assert!(
            log.records_lost > 0,
            "the pipe filled and records were counted as lost"
        );
    }

    #[test]
    fn volume_beyond_the_window_budget_is_suppressed_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let mut log = FlowLog::open("eth0", Some(&path), 0).unwrap();
        log.budget = Budget::new(100_000, 300);
        for _ in 0..1_000 {
            log.push(record(1));
        }
        log.write_out(0).unwrap();
        let written = std::fs::metadata(&path).unwrap().len();
        assert!(written <= 100_000, "{written} bytes");
        assert_eq!(log.records_written, 300);
        assert_eq!(log.records_suppressed, 700);
        // The same window: nothing more is written.
        log.push(record(1));
        log.write_out(BUDGET_WINDOW_MS - 1).unwrap();
        assert_eq!((log.records_written, log.records_suppressed), (300, 701));
        // Bytes bound the window too.
        log.budget = Budget::new(1_000, 300);
        for _ in 0..100 {
            log.push(record(1));
        }
        log.write_out(BUDGET_WINDOW_MS).unwrap();
        let lines = log.records_written - 300;
        assert!(lines > 0 && lines < 10, "{lines} lines in 1000 bytes");
        assert_eq!(log.records_suppressed, 701 + 100 - lines);
    }
}
