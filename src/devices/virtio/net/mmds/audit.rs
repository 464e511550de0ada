//! The MMDS audit line: one log line per answered guest request, with the interface, method,
//! path, status and, for a request that carried a valid V2 token, the token's age in seconds.
//! Never the token, never the answer.
//!
//! Method and path are guest bytes: every byte outside printable ASCII (and space, `\`, `"`)
//! is written as `\xNN`, and they are cut at [`METHOD_MAX`] and [`PATH_MAX`] bytes (a cut
//! ends in `...`), so a guest can neither inject a line nor make one long. Lines are limited
//! per VM ([`super::limits`]: a burst of 100, then one a second); the next line written counts
//! those suppressed:
//!
//! `mmds request: iface=eth0 method=GET path=/latest/meta-data/iam status=200 token_age_s=12
//! suppressed=0`
//!
//! With an `--audit-log` file the entry goes there instead, as a JSON record
//! ([`AuditEntry::record`], `"event": "mmds"`, beside the API's records), under the same
//! budget, and the log gets no line ([`AuditEntry::emit`]).

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

/// Bytes of the path kept.
pub const PATH_MAX: usize = 128;
/// Bytes of the method kept.
pub const METHOD_MAX: usize = 16;

/// What one line says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// The method, escaped and cut (`-` when the request line could not be parsed).
    pub method: String,
    /// The path, escaped and cut (`-` when the request line could not be parsed).
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// The age of the valid token the request carried.
    pub token_age: Option<Duration>,
}

/// `bytes` with everything but printable ASCII escaped, cut at `max` input bytes.
pub fn escape(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max) + 3);
    for &b in bytes.iter().take(max) {
        match b {
            b'!'..=b'~' if b != b'\\' && b != b'"' => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    if bytes.len() > max {
        out.push_str("...");
    }
    out
}

impl AuditEntry {
    /// An entry for a request whose line could not be read.
    pub fn unparsed(status: u16) -> Self {
        Self {
            method: "-".to_string(),
            path: "-".to_string(),
            status,
            token_age: None,
        }
    }

    /// The line for interface `iface`, `suppressed` lines having been dropped before it.
    pub fn line(&self, iface: &str, suppressed: u64) -> String {
        let mut line = format!(
            "mmds request: iface={iface} method={} path={} status={}",
            self.method, self.path, self.status
        );
        if let Some(age) = self.token_age {
            let _ = write!(line, " token_age_s={}", age.as_secs());
        }
        let _ = write!(line, " suppressed={suppressed}");
        line
    }
}

/// The audit-log record of one answered guest request.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    /// UTC time, RFC 3339 with microseconds.
    pub time: String,
    /// Always `mmds`.
    pub event: &'static str,
    /// The interface the request came in on.
    pub iface: &'a str,
    /// The method, escaped and cut.
    pub method: &'a str,
    /// The path, escaped and cut.
    pub path: &'a str,
    /// The status answered.
    pub status: u16,
    /// Age in seconds of the valid token the request carried (absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_age_s: Option<u64>,
    /// Records suppressed by the budget since the previous one.
    pub suppressed: u64,
}

impl AuditEntry {
    /// The audit-log record of this entry on interface `iface`.
    pub fn record<'a>(&'a self, iface: &'a str, suppressed: u64) -> AuditRecord<'a> {
        AuditRecord {
            time: crate::audit::utc_now(),
            event: "mmds",
            iface,
            method: &self.method,
            path: &self.path,
            status: self.status,
            token_age_s: self.token_age.map(|age| age.as_secs()),
            suppressed,
        }
    }
}

impl AuditEntry {
    /// Writes this entry (on `iface`, `suppressed` entries dropped before it) once: as a record
    /// to the `--audit-log` file when there is one, else as a line to `sink` (the log).
    pub fn emit(&self, iface: &str, suppressed: u64, sink: fn(&str)) {
        if !crate::audit::device_record(&self.record(iface, suppressed)) {
            sink(&self.line(iface, suppressed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_bytes_are_escaped_and_cut_so_no_line_can_be_injected() {
        assert_eq!(escape(b"/latest/meta-data", PATH_MAX), "/latest/meta-data");
        assert_eq!(
            escape(b"/a\r\nmmds request: fake \"x\\\x7f\xff", PATH_MAX),
            "/a\\x0d\\x0ammds\\x20request:\\x20fake\\x20\\x22x\\x5c\\x7f\\xff"
        );
        let long = escape(&[b'a'; 1000], PATH_MAX);
        assert_eq!(long.len(), PATH_MAX + 3);
        assert!(long.ends_with("..."));
        // The worst case stays bounded: every byte escaped.
        assert_eq!(escape(&[0u8; 1000], PATH_MAX).len(), PATH_MAX * 4 + 3);
    }

    #[test]
    fn the_line_names_the_token_age_and_never_more() {
        let entry = AuditEntry {
            method: "GET".into(),
            path: "/latest/meta-data/iam".into(),
            status: 200,
            token_age: Some(Duration::from_millis(12_900)),
        };
        assert_eq!(
            entry.line("eth0", 3),
            "mmds request: iface=eth0 method=GET path=/latest/meta-data/iam status=200 \
             token_age_s=12 suppressed=3"
        );
        assert_eq!(
            AuditEntry::unparsed(400).line("eth1", 0),
            "mmds request: iface=eth1 method=- path=- status=400 suppressed=0"
        );
    }

    static EMITTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

    fn capture(line: &str) {
        EMITTED.lock().unwrap().push(line.to_string());
    }

    #[test]
    fn without_an_audit_log_file_the_entry_is_one_log_line() {
        // No device log is installed in this process (only `main` installs one).
        let entry = AuditEntry::unparsed(400);
        entry.emit("eth7", 4, capture);
        let lines = EMITTED.lock().unwrap();
        assert_eq!(
            lines.as_slice(),
            ["mmds request: iface=eth7 method=- path=- status=400 suppressed=4"]
        );
    }

    #[test]
    fn the_audit_log_record_carries_the_line_fields_and_no_token_age_without_a_token() {
        let mut entry = AuditEntry {
            method: "GET".into(),
            path: "/latest/meta-data".into(),
            status: 200,
            token_age: Some(Duration::from_secs(7)),
        };
        let v = serde_json::to_value(entry.record("eth0", 2)).unwrap();
        assert_eq!(v["event"], "mmds");
        assert_eq!(v["iface"], "eth0");
        assert_eq!(v["path"], "/latest/meta-data");
        assert_eq!(v["status"], 200);
        assert_eq!(v["token_age_s"], 7);
        assert_eq!(v["suppressed"], 2);
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        entry.token_age = None;
        let v = serde_json::to_value(entry.record("eth0", 0)).unwrap();
        assert!(v.get("token_age_s").is_none(), "{v}");
        assert_eq!(v.as_object().unwrap().len(), 7, "no other field: {v}");
    }
}
