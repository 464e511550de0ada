//! The metrics output: opened once by `--metrics-path` or `PUT /metrics`, written one JSON line
//! per [`flush`], never blocking.

use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};

use super::{Metrics, MetricsConfig, MetricsError, METRICS};
use crate::logger::Output;

/// The metrics destination and the unwritten rest of the last line.
#[derive(Debug)]
struct Sink {
    out: Output,
    pending: Vec<u8>,
}

impl Sink {
    fn new(out: Output) -> Self {
        Self {
            out,
            pending: Vec::new(),
        }
    }

    /// Writes what an earlier flush left, then one new line of `metrics`; counts a failure in
    /// `metrics.logger`.
    fn flush(&mut self, metrics: &Metrics) -> Result<(), MetricsError> {
        let result = self.write_pending().and_then(|()| {
            let mut line = serde_json::to_vec(metrics).map_err(MetricsError::Serialize)?;
            line.push(b'\n');
            self.pending = line;
            self.write_pending()
        });
        match &result {
            Ok(()) => {}
            Err(MetricsError::OutputFull) => metrics.logger.missed_metrics_count.inc(),
            Err(_) => {
                metrics.logger.missed_metrics_count.inc();
                metrics.logger.metrics_fails.inc();
            }
        }
        result
    }

    /// Writes `pending` without ever waiting: stops at a full pipe or an error.
    fn write_pending(&mut self) -> Result<(), MetricsError> {
        while !self.pending.is_empty() {
            match self.out.write_once(&self.pending) {
                Ok(0) => return Err(MetricsError::OutputFull),
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(MetricsError::OutputFull)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(MetricsError::Write(e)),
            }
        }
        Ok(())
    }
}

static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();

/// `--metrics-path PATH`: [`init_from_config`] with only the path.
pub fn init(path: &str) -> Result<(), MetricsError> {
    init_from_config(&MetricsConfig {
        metrics_path: PathBuf::from(path),
        emit_id: false,
        properties: None,
    })
}

/// `PUT /metrics` or the config file's `metrics`: opens the file or named pipe (created 0600
/// when missing; a pipe needs no reader yet) and sets `id` and `properties`. Once per process,
/// as in Firecracker; a second call fails with [`MetricsError::AlreadyInitialized`] and opens
/// nothing.
pub fn init_from_config(cfg: &MetricsConfig) -> Result<(), MetricsError> {
    if SINK.get().is_some() {
        return Err(MetricsError::AlreadyInitialized);
    }
    let out = Output::open(&cfg.metrics_path).map_err(|source| MetricsError::Open {
        path: cfg.metrics_path.clone(),
        source,
    })?;
    if let Some(properties) = &cfg.properties {
        METRICS.properties.set(properties.clone())?;
    }
    if cfg.emit_id {
        METRICS.id.enable();
    }
    SINK.set(Mutex::new(Sink::new(out)))
        .map_err(|_| MetricsError::AlreadyInitialized)
}

/// Writes one line of [`METRICS`]: `Ok(true)` when written, `Ok(false)` when metrics are not
/// initialised. Never blocks; when the output is full or failing, the line (or its rest) waits
/// for the next flush, the failure is counted, and the error says why.
pub fn flush() -> Result<bool, MetricsError> {
    let Some(sink) = SINK.get() else {
        return Ok(false);
    };
    let mut sink = sink.lock().unwrap_or_else(PoisonError::into_inner);
    sink.flush(&METRICS).map(|()| true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::fs::OpenOptions;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;

    use serde_json::Value;

    use super::*;
    use crate::logger::Output;

    fn fifo_with_idle_reader(dir: &Path) -> (PathBuf, std::fs::File) {
        let path = dir.join("metrics.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Keeps the pipe open like an orchestrator's reader that does not read.
        let reader = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        (path, reader)
    }

    fn drain(reader: &mut std::fs::File) -> String {
        let mut text = Vec::new();
        let mut buf = vec![0; 1 << 16];
        loop {
            match reader.read(&mut buf) {
                Ok(n) if n > 0 => text.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn lines_are_appended_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let mut sink = Sink::new(Output::open(&path).unwrap());
        let metrics = Metrics::new();
        metrics.i8042.reset_count.inc();
        sink.flush(&metrics).unwrap();
        sink.flush(&metrics).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["i8042"]["reset_count"], 1);
        assert_eq!(lines[1]["i8042"]["reset_count"], 0);
    }

    #[test]
    fn a_full_fifo_never_blocks_counts_missed_flushes_and_loses_no_count() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut reader) = fifo_with_idle_reader(dir.path());
        let mut sink = Sink::new(Output::open(&path).unwrap());
        let metrics = Metrics::new();
        // Lines longer than PIPE_BUF, so that the pipe takes some of them only in part.
        metrics
            .properties
            .set(BTreeMap::from([("pad".to_string(), "p".repeat(5000))]))
            .unwrap();
        let mut written = 0;
        let mut missed = 0;
        for _ in 0..100 {
            metrics.uart.write_count.inc();
            match sink.flush(&metrics) {
                Ok(()) => written += 1,
                Err(MetricsError::OutputFull) => missed += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            written > 0 && missed > 0,
            "{written} written, {missed} missed"
        );
        assert_eq!(metrics.logger.missed_metrics_count.count(), missed);
        assert_eq!(metrics.logger.metrics_fails.count(), 0);

        // The reader comes back: it gets whole lines, the waiting one first, then a new one.
        let mut text = drain(&mut reader);
        sink.flush(&metrics).unwrap();
        text.push_str(&drain(&mut reader));
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a whole JSON line"))
            .collect();
        assert_eq!(lines.len(), written + 2);
        let reported: u64 = lines
            .iter()
            .map(|l| l["uart"]["write_count"].as_u64().unwrap())
            .sum();
        assert_eq!(reported, 100, "every counted byte is reported exactly once");
        assert_eq!(
            lines.last().unwrap()["logger"]["missed_metrics_count"],
            missed
        );
    }

    #[test]
    fn global_metrics_flush_once_initialised_and_refuse_a_second_init() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        init(path.to_str().unwrap()).unwrap();
        METRICS.palisade.api_connections.inc();
        assert!(flush().unwrap());
        let second = init(dir.path().join("other.json").to_str().unwrap());
        assert!(matches!(second, Err(MetricsError::AlreadyInitialized)));
        assert!(!dir.path().join("other.json").exists());
        let text = std::fs::read_to_string(&path).unwrap();
        let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["palisade"]["api_connections"], 1);
    }

    #[test]
    fn a_bad_path_is_an_open_error() {
        let cfg = MetricsConfig {
            metrics_path: PathBuf::from("/nonexistent/dir/metrics.json"),
            emit_id: false,
            properties: None,
        };
        let err = init_from_config(&cfg).unwrap_err();
        // The global may already be initialised by another test; either refusal is right.
        assert!(matches!(
            err,
            MetricsError::Open { .. } | MetricsError::AlreadyInitialized
        ));
    }
}
