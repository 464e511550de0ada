//! The audit log: one JSON line per API request and per refused connection, with the peer's
//! credentials. Never request bodies (they may hold secrets). Writes never block the API.
//! The file itself is [`crate::audit`]'s, which devices write to as well (MMDS reads).

use serde::Serialize;

pub use crate::audit::{utc_now, AuditError, AuditLog};

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

/// Truncates attacker-controlled paths before they are logged.
pub fn loggable_path(path: &str) -> &str {
    match path.char_indices().nth(256) {
        Some((i, _)) => &path[..i],
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
