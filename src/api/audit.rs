//! The audit log: one JSON line per API request and per refused connection, with the peer's
//! credentials. Never request bodies (they may hold secrets). Writes never block the API.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

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

/// Credentials of the process at the other end of a connection (SO_PEERCRED).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// One audit record.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    /// UTC time, RFC 3339 with microseconds.
    pub time: String,
    /// "request" or "refused".
    pub event: &'a str,
    /// Peer process id.
    pub peer_pid: i32,
    /// Peer user id.
    pub peer_uid: u32,
    /// Peer group id.
    pub peer_gid: u32,
    /// Request method, empty for refused connections.
    pub method: &'a str,
    /// Request path (at most 256 characters), empty for refused connections.
    pub path: &'a str,
    /// Status answered.
    pub status: u16,
    /// Time from the complete request to the answer, in µs.
    pub duration_us: u64,
}

/// Where records go.
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
    pub fn write(&mut self, record: &AuditRecord) -> bool {
        let mut line = serde_json::to_vec(record).unwrap_or_default();
        line.push(b'\n');
        match self.file.write(&line) {
            Ok(n) => n == line.len(),
            Err(_) => false,
        }
    }
}

/// Truncates attacker-controlled paths before they are logged.
pub fn loggable_path(path: &str) -> &str {
    match path.char_indices().nth(256) {
        Some((i, _)) => &path[..i],
        None => path,
    }
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
    fn records_are_json_lines_without_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(path.to_str().unwrap()).unwrap();
        assert!(log.write(&AuditRecord {
            time: utc_now(),
            event: "request",
            peer_pid: 1,
            peer_uid: 2,
            peer_gid: 3,
            method: "PUT",
            path: "/actions",
            status: 204,
            duration_us: 7,
        }));
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["peer_uid"], 2);
        assert_eq!(v["status"], 204);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn long_paths_are_truncated() {
        let long = "a".repeat(1000);
        assert_eq!(loggable_path(&long).len(), 256);
        assert_eq!(loggable_path("/x"), "/x");
    }
}
