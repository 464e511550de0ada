//! The process logger and rate-limited logging for guest-triggered events.
//!
//! Firecracker's semantics: lines go to stderr until `--log-path` or `PUT /logger` names a file
//! or named pipe ([`configure`]). A line reads
//! `<time> [<id>:<thread>[:<LEVEL>][:<file>:<line>]] <message>`, the level and origin parts
//! shown when `show_level` / `show_log_origin` are set; the time is UTC, in Firecracker's
//! `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn` shape. Each line is one write(2), so lines of different threads
//! never interleave. A file or pipe is opened non-blocking: a line that does not fit into a full
//! pipe, or whose write fails, is dropped and counted by the logger itself in `METRICS.logger`
//! (`missed_log_count`; `log_fails` when the write failed), never waited for.
//!
//! [`Output`] is also the metrics module's way to open and write its destination.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};
use serde::{Deserialize, Serialize};

use crate::metrics::METRICS;

/// The instance id in log lines when `--id` is not given (Firecracker's default).
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";
/// The level a `PUT /logger` without `level` sets (Firecracker's swagger default).
pub const DEFAULT_LEVEL: LevelFilter = LevelFilter::Info;
/// Writes of at most this many bytes into a pipe are atomic: all or nothing (pipe(7)).
const PIPE_BUF: usize = libc::PIPE_BUF;
/// Ends a line cut to fit into one atomic pipe write.
const TRUNCATED: &str = " [truncated]\n";

/// Errors of logger setup.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// The level name is not one of Firecracker's.
    #[error("Invalid log level '{0}': use Error, Warning, Info, Debug, Trace or Off")]
    InvalidLevel(String),
    /// A logger was already installed.
    #[error("The logger is already initialised")]
    AlreadySet,
    /// The log file or named pipe cannot be opened.
    #[error("Cannot open the log output '{}'", path.display())]
    Open {
        /// The path as given.
        path: PathBuf,
        /// Why open(2) failed.
        #[source]
        source: io::Error,
    },
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

/// Firecracker's name of a level, as its swagger document spells it.
pub fn level_name(level: LevelFilter) -> &'static str {
    match level {
        LevelFilter::Off => "Off",
        LevelFilter::Error => "Error",
        LevelFilter::Warn => "Warning",
        LevelFilter::Info => "Info",
        LevelFilter::Debug => "Debug",
        LevelFilter::Trace => "Trace",
    }
}

/// The body of `PUT /logger` and the `logger` section of a config file (Firecracker's
/// `Logger`). Every field is optional; see [`configure`] for what each absent field means.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// File or named pipe for the log lines; stderr until one is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Error, Warning, Info, Debug, Trace or Off (case-insensitive).
    #[serde(default, with = "level_serde", skip_serializing_if = "Option::is_none")]
    pub level: Option<LevelFilter>,
    /// Whether lines carry their level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Whether lines carry the source file and line that logged them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only lines logged from modules whose path starts with this are written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// Serde for `Option<LevelFilter>` with Firecracker's names.
mod level_serde {
    use log::LevelFilter;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(level: &Option<LevelFilter>, s: S) -> Result<S::Ok, S::Error> {
        match level {
            Some(level) => s.serialize_str(super::level_name(*level)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<LevelFilter>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|name| super::parse_level(&name).map_err(D::Error::custom))
            .transpose()
    }
}

/// Why a line was not written.
#[derive(Debug)]
enum LineLost {
    /// The pipe is full (EAGAIN), or took only part of the line.
    Full,
    /// Any other write error.
    Failed,
}

/// A file or named pipe opened for log or metrics lines: O_APPEND | O_NONBLOCK | O_CLOEXEC,
/// created 0600 when missing. A named pipe is opened read-write, as Firecracker does, so the
/// open does not fail (ENXIO) or block while no reader is attached, and the pipe keeps its
/// buffered lines between readers; once it is full, writes fail with EAGAIN instead of blocking.
#[derive(Debug)]
pub(crate) struct Output {
    file: File,
    fifo: bool,
}

impl Output {
    /// Opens (and creates, if missing) the file or named pipe at `path`.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let open = |read: bool| {
            OpenOptions::new()
                .read(read)
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(path)
        };
        // A path we may write but not read (a 0200 file) still works without the read side.
        let file = match open(true) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => open(false)?,
            other => other?,
        };
        let fifo = file.metadata()?.file_type().is_fifo();
        Ok(Self { file, fifo })
    }

    /// Whether the output is a named pipe.
    pub(crate) fn is_fifo(&self) -> bool {
        self.fifo
    }

    /// One write(2) of `buf`; returns how much was written, like `write`.
    pub(crate) fn write_once(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }
}

/// Where log lines go.
#[derive(Debug)]
enum Target {
    /// The inherited stderr, blocking as the parent left it (Firecracker writes to stdout).
    Stderr,
    /// A file or named pipe from `--log-path` or `PUT /logger`.
    Output {
        out: Output,
        /// A line was cut short (disk full); the next one starts with a newline.
        torn: AtomicBool,
    },
}

impl Target {
    fn write_line(&self, line: &mut String) -> Result<(), LineLost> {
        match self {
            Target::Stderr => match io::stderr().lock().write(line.as_bytes()) {
                Ok(n) if n == line.len() => Ok(()),
                Ok(_) => Err(LineLost::Full),
                Err(_) => Err(LineLost::Failed),
            },
            Target::Output { out, torn } => {
                if torn.load(Ordering::Relaxed) {
                    line.insert(0, '\n');
                }
                if out.is_fifo() {
                    truncate_for_pipe(line);
                }
                match out.write_once(line.as_bytes()) {
                    Ok(n) if n == line.len() => {
                        torn.store(false, Ordering::Relaxed);
                        Ok(())
                    }
                    Ok(n) => {
                        torn.store(n > 0, Ordering::Relaxed);
                        Err(LineLost::Full)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(LineLost::Full),
                    Err(_) => Err(LineLost::Failed),
                }
            }
        }
    }
}

/// Cuts `line` to PIPE_BUF bytes at most, so that writing it into a pipe is all or nothing.
fn truncate_for_pipe(line: &mut String) {
    if line.len() <= PIPE_BUF {
        return;
    }
    let mut end = PIPE_BUF - TRUNCATED.len();
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line.truncate(end);
    line.push_str(TRUNCATED);
}

/// What a line looks like and which lines are written.
#[derive(Debug)]
struct State {
    target: Target,
    show_level: bool,
    show_log_origin: bool,
    module: Option<String>,
}

impl State {
    const fn new() -> Self {
        Self {
            target: Target::Stderr,
            show_level: false,
            show_log_origin: false,
            module: None,
        }
    }

    /// Firecracker's module filter: the record's module path starts with the filter. Palisade's
    /// paths start with the crate name, so `api::server` matches as `palisade::api::server` does.
    fn accepts(&self, module_path: Option<&str>) -> bool {
        let Some(filter) = self.module.as_deref() else {
            return true;
        };
        let Some(path) = module_path else {
            return false;
        };
        path.starts_with(filter)
            || path
                .strip_prefix(concat!(env!("CARGO_CRATE_NAME"), "::"))
                .is_some_and(|p| p.starts_with(filter))
    }

    fn format(&self, record: &Record, thread: &str, now: SystemTime) -> String {
        let mut line = format!("{} [{}:{thread}", utc_timestamp(now), instance_id());
        if self.show_level {
            line.push(':');
            line.push_str(record.level().as_str());
        }
        if self.show_log_origin {
            let file = record.file().unwrap_or("?");
            match record.line() {
                Some(n) => line.push_str(&format!(":{file}:{n}")),
                None => line.push_str(&format!(":{file}:?")),
            }
        }
        line.push_str(&format!("] {}\n", record.args()));
        line
    }

    fn log(&self, record: &Record) {
        if !self.accepts(record.module_path()) {
            return;
        }
        let thread = std::thread::current();
        let mut line = self.format(record, thread.name().unwrap_or("-"), SystemTime::now());
        if let Err(lost) = self.target.write_line(&mut line) {
            METRICS.logger.missed_log_count.inc();
            if matches!(lost, LineLost::Failed) {
                METRICS.logger.log_fails.inc();
            }
        }
    }
}

/// Log lines take the read lock; only [`configure`] (pre-boot) takes the write lock.
static STATE: RwLock<State> = RwLock::new(State::new());
static INSTANCE_ID: OnceLock<String> = OnceLock::new();

struct Logger;

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            STATE
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .log(record);
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs the logger for instance `id` at `level`, writing to stderr until [`configure`]
/// names a file or pipe.
pub fn init(id: &str, level: LevelFilter) -> Result<(), LoggerError> {
    // A second call keeps the first id, as the logger it installed does.
    let _ = INSTANCE_ID.set(id.to_string());
    log::set_logger(&LOGGER).map_err(|_| LoggerError::AlreadySet)?;
    log::set_max_level(level);
    Ok(())
}

/// Applies `PUT /logger` or `--log-path` & co. with Firecracker's semantics: the level is set
/// to `cfg.level`, or to Info when absent; every other absent field keeps its current value.
/// The new file or pipe is opened before anything changes, so a bad path changes nothing.
/// Call it from the VMM thread, pre-boot only (Firecracker refuses `PUT /logger` after
/// InstanceStart); lines from other threads wait for the swap.
pub fn configure(cfg: &LoggerConfig) -> Result<(), LoggerError> {
    let target = cfg.log_path.as_deref().map(open_target).transpose()?;
    let mut state = STATE.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(target) = target {
        state.target = target;
    }
    if let Some(show) = cfg.show_level {
        state.show_level = show;
    }
    if let Some(show) = cfg.show_log_origin {
        state.show_log_origin = show;
    }
    if let Some(module) = &cfg.module {
        state.module = Some(module.clone());
    }
    log::set_max_level(cfg.level.unwrap_or(DEFAULT_LEVEL));
    Ok(())
}

/// `--log-path PATH`: sends the following lines to the file or named pipe at `path`; the
/// level (from `--level`) and the line format stay as they are.
pub fn set_log_path(path: impl AsRef<Path>) -> Result<(), LoggerError> {
    let target = open_target(path.as_ref())?;
    STATE.write().unwrap_or_else(PoisonError::into_inner).target = target;
    Ok(())
}

fn open_target(path: &Path) -> Result<Target, LoggerError> {
    let out = Output::open(path).map_err(|source| LoggerError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Target::Output {
        out,
        torn: AtomicBool::new(false),
    })
}

/// The instance id given to [`init`], or Firecracker's default.
pub fn instance_id() -> &'static str {
    INSTANCE_ID
        .get()
        .map_or(DEFAULT_INSTANCE_ID, String::as_str)
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn` in UTC: Firecracker's timestamp shape, without reading the
/// time zone database (which a jailed, filtered process may not open).
fn utc_timestamp(now: SystemTime) -> String {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let second_of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        since_epoch.subsec_nanos()
    )
}

/// Year, month, day of the `days`-th day after 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
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
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use log::Level;

    use super::*;

    fn state_writing_to(path: &Path) -> State {
        State {
            target: Target::Output {
                out: Output::open(path).unwrap(),
                torn: AtomicBool::new(false),
            },
            ..State::new()
        }
    }

    fn log_one(state: &State, module: &str, message: &str) {
        state.log(
            &Record::builder()
                .args(format_args!("{message}"))
                .level(Level::Warn)
                .module_path(Some(module))
                .file(Some("src/vmm/builder.rs"))
                .line(Some(42))
                .build(),
        );
    }

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

    #[test]
    fn put_logger_body_parses_with_firecracker_names() {
        let cfg: LoggerConfig = serde_json::from_str(
            r#"{"log_path": "logs.fifo", "level": "WARNING", "show_level": true,
                "show_log_origin": false, "module": "api::server"}"#,
        )
        .unwrap();
        assert_eq!(cfg.log_path, Some(PathBuf::from("logs.fifo")));
        assert_eq!(cfg.level, Some(LevelFilter::Warn));
        assert_eq!(cfg.show_level, Some(true));
        assert_eq!(cfg.show_log_origin, Some(false));
        assert_eq!(cfg.module.as_deref(), Some("api::server"));
        assert_eq!(
            serde_json::to_value(&cfg).unwrap()["level"],
            serde_json::json!("Warning")
        );

        let empty: LoggerConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, LoggerConfig::default());
        assert_eq!(serde_json::to_string(&empty).unwrap(), "{}");
    }

    #[test]
    fn put_logger_body_refuses_unknown_fields_and_levels() {
        let unknown = serde_json::from_str::<LoggerConfig>(r#"{"log_path": "x", "colour": true}"#);
        assert!(unknown.unwrap_err().to_string().contains("unknown field"));
        let level = serde_json::from_str::<LoggerConfig>(r#"{"level": "loud"}"#);
        assert!(level
            .unwrap_err()
            .to_string()
            .contains("Invalid log level 'loud'"));
    }

    #[test]
    fn line_format_follows_firecracker_flags() {
        let record = Record::builder()
            .args(format_args!("hello"))
            .level(Level::Error)
            .file(Some("src/api/server.rs"))
            .line(Some(7))
            .build();
        let now = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let id = instance_id();
        let mut state = State::new();
        assert_eq!(
            state.format(&record, "vmm", now),
            format!("2023-11-14T22:13:20.000000005 [{id}:vmm] hello\n")
        );
        state.show_level = true;
        assert_eq!(
            state.format(&record, "vmm", now),
            format!("2023-11-14T22:13:20.000000005 [{id}:vmm:ERROR] hello\n")
        );
        state.show_log_origin = true;
        assert_eq!(
            state.format(&record, "api", now),
            format!("2023-11-14T22:13:20.000000005 [{id}:api:ERROR:src/api/server.rs:7] hello\n")
        );
    }

    #[test]
    fn utc_timestamps_are_calendar_correct() {
        let at = |s| utc_timestamp(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000000000");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000000000");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59.000000000");
    }

    #[test]
    fn module_filter_matches_with_or_without_the_crate_name() {
        let mut state = State::new();
        assert!(state.accepts(None));
        state.module = Some("api::server".to_string());
        assert!(state.accepts(Some("palisade::api::server")));
        assert!(state.accepts(Some("api::server::conn")));
        assert!(!state.accepts(Some("palisade::vmm::builder")));
        assert!(!state.accepts(None));
    }

    #[test]
    fn lines_are_appended_to_a_file_created_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palisade.log");
        let state = state_writing_to(&path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        log_one(&state, "palisade::vmm", "first");
        log_one(&state, "palisade::vmm", "second");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].ends_with("] first"), "{text}");
        assert!(lines[1].ends_with("] second"), "{text}");

        // A second open appends rather than truncating.
        let again = state_writing_to(&path);
        log_one(&again, "palisade::vmm", "third");
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
    }

    #[test]
    fn a_fifo_without_reader_never_blocks_and_counts_lost_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Kept open like an orchestrator's reader that does not read.
        let mut reader = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let state = state_writing_to(&path);
        let long = "x".repeat(3 * PIPE_BUF);
        let before = METRICS.logger.missed_log_count.count();
        // Far more than a 64 KiB pipe holds; none of these may block.
        for _ in 0..100 {
            log_one(&state, "palisade::vmm", &long);
        }
        assert!(
            METRICS.logger.missed_log_count.count() > before,
            "nothing was dropped"
        );

        // What did get through is whole lines, each cut to PIPE_BUF.
        let mut buf = vec![0; 1 << 20];
        let n = reader.read(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.ends_with('\n'));
        for line in text.lines() {
            assert!(line.ends_with(" [truncated]"), "{line}");
            assert_eq!(line.len() + 1, PIPE_BUF);
        }
    }

    #[test]
    fn configure_switches_output_and_flags_and_keeps_state_on_bad_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.log");
        configure(&LoggerConfig {
            log_path: Some(path.clone()),
            level: Some(LevelFilter::Debug),
            show_level: Some(true),
            ..LoggerConfig::default()
        })
        .unwrap();
        assert_eq!(log::max_level(), LevelFilter::Debug);

        let bad = configure(&LoggerConfig {
            log_path: Some(dir.path().join("missing/dir/vmm.log")),
            show_level: Some(false),
            ..LoggerConfig::default()
        });
        assert!(matches!(bad, Err(LoggerError::Open { .. })));

        // Through the installed-or-not global logger object itself.
        LOGGER.log(
            &Record::builder()
                .args(format_args!("configured"))
                .level(Level::Info)
                .module_path(Some("palisade::vmm"))
                .build(),
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(":INFO] configured\n"), "{text}");

        // Firecracker: a PUT without level resets it to Info.
        configure(&LoggerConfig::default()).unwrap();
        assert_eq!(log::max_level(), DEFAULT_LEVEL);
    }
}
