//! The audit log file: one JSON line per record, appended without blocking. The API writes a
//! record per request and per refused connection (`api::audit`); devices write theirs through
//! the process-wide device log that `main` installs next to it (MMDS reads: interface, path,
//! status, token age, never values). Lines are written whole by one `write(2)` on an
//! `O_APPEND` file, so the API thread's and the VMM thread's lines never interleave.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::METRICS;

/// Errors of audit log setup.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file cannot be opened.
    #[error("Cannot open the audit log {path}: {source}")]
    Open {
        /// Path given.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Where records go.
#[derive(Debug)]
pub struct AuditLog {
    file: File,
}

impl AuditLog {
    /// Opens (creating with mode 0600) `path` for appending, non-blocking.
    pub fn open(path: &str) -> Result<Self, AuditError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| AuditError::Open {
                path: path.to_string(),
                source,
            })?;
        Ok(Self { file })
    }

    /// Appends one line; a line that cannot be written now is counted as lost.
    pub fn write<T: Serialize>(&mut self, record: &T) -> bool {
        let mut line = serde_json::to_vec(record).unwrap_or_default();
        line.push(b'\n');
        match self.file.write(&line) {
            Ok(n) => n == line.len(),
            Err(_) => false,
        }
    }

    /// A second handle on the same file (for the device log).
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
        })
    }
}

static DEVICE_LOG: OnceLock<Mutex<AuditLog>> = OnceLock::new();

/// Makes `log` the device log for the rest of the process; false if one was installed.
pub fn install_device_log(log: AuditLog) -> bool {
    DEVICE_LOG.set(Mutex::new(log)).is_ok()
}

/// Appends a device's record to the device log, if one is installed; counted in the
/// `palisade` metrics group as the API's lines are. False when there is no device log (the
/// record went nowhere: the caller may log it instead).
pub fn device_record<T: Serialize>(record: &T) -> bool {
    let Some(log) = DEVICE_LOG.get() else {
        return false;
    };
    if log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .write(record)
    {
        METRICS.palisade.audit_lines.inc();
    } else {
        METRICS.palisade.audit_lost_lines.inc();
    }
    true
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn utc_now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(since.as_secs(), since.subsec_micros())
}

fn format_utc(secs: u64, micros: u32) -> String {
    let (year, month, day) = crate::logger::civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting_matches_known_dates() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(format_utc(1_795_000_000, 0), "2026-11-18T11:06:40.000000Z");
    }

    #[test]
    fn records_of_any_shape_are_whole_json_lines_and_a_clone_appends_to_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(path.to_str().unwrap()).unwrap();
        let mut clone = log.try_clone().unwrap();
        assert!(log.write(&serde_json::json!({"event": "request"})));
        assert!(clone.write(&serde_json::json!({"event": "mmds", "status": 200})));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["event"], "mmds");
    }
}
