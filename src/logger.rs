//! The process logger (stderr) and rate-limited logging for guest-triggered events.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Errors of logger setup.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// The level name is not one of Firecracker's.
    #[error("Invalid log level '{0}': use Error, Warning, Info, Debug, Trace or Off")]
    InvalidLevel(String),
    /// A logger was already installed.
    #[error("The logger is already initialised")]
    AlreadySet,
}

/// Parses Firecracker's level names (case-insensitive; `Warn` accepted too).
pub fn parse_level(s: &str) -> Result<LevelFilter, LoggerError> {
    match s.to_ascii_lowercase().as_str() {
        "off" => Ok(LevelFilter::Off),
        "error" => Ok(LevelFilter::Error),
        "warning" | "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err(LoggerError::InvalidLevel(s.to_string())),
    }
}

struct StderrLogger {
    instance_id: String,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let thread = std::thread::current();
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        // One write per line, so lines of different threads never interleave.
        let line = format!(
            "[{}:{}] {} {}\n",
            self.instance_id,
            thread.name().unwrap_or("?"),
            level,
            record.args()
        );
        // A failed write to stderr cannot be reported anywhere; the VMM keeps running.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: OnceLock<StderrLogger> = OnceLock::new();

/// Installs the logger for instance `id` at `level`.
pub fn init(id: &str, level: LevelFilter) -> Result<(), LoggerError> {
    let logger = LOGGER.get_or_init(|| StderrLogger {
        instance_id: id.to_string(),
    });
    log::set_logger(logger).map_err(|_| LoggerError::AlreadySet)?;
    log::set_max_level(level);
    Ok(())
}

/// Counts guest-triggered events and says which of them deserve a log line: the first ten,
/// then every power of two, so a hostile guest cannot flood the log.
#[derive(Default)]
pub struct RateLimitedLog {
    count: AtomicU64,
}

impl RateLimitedLog {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self {
            count: AtomicU64::new(0),
        }
    }

    /// Counts one event; returns its number when it should be logged.
    pub fn hit(&self) -> Option<u64> {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        (n <= 10 || n.is_power_of_two()).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_level_names_parse() {
        assert_eq!(parse_level("Warning").unwrap(), LevelFilter::Warn);
        assert_eq!(parse_level("debug").unwrap(), LevelFilter::Debug);
        assert!(parse_level("loud").is_err());
    }

    #[test]
    fn rate_limited_log_thins_out() {
        let r = RateLimitedLog::new();
        let logged = (0..1000).filter(|_| r.hit().is_some()).count();
        // 1..=10, then 16, 32, 64, 128, 256, 512.
        assert_eq!(logged, 16);
    }
}
