//! `palisade`: a KVM microVM monitor that draws the provider-side security boundary.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use clap::Parser;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use palisade::api::{ServerConfig, VmmLink};
use palisade::config::{host_memory_mib, ConfigError, VmConfig, VmResources};
use palisade::vmm::builder::BuildOptions;
use palisade::vmm::controller::Controller;
use palisade::vmm::event_loop::{self, ApiChannel};
use palisade::vmm::RunError;
use palisade::vstate::exit::{ExitCode, ExitRequest};
use palisade::{api, devices, error_chain, logger, metrics, seccomp};

/// Command line. Flag names follow Firecracker's where Firecracker has the flag.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, about)]
struct Cli {
    /// Path of the API socket (created with mode 0600).
    #[arg(long, value_name = "PATH", default_value = "/run/palisade.socket")]
    api_sock: PathBuf,
    /// Boot at once from this Firecracker-format config file.
    #[arg(long, value_name = "PATH")]
    config_file: Option<String>,
    /// Run without the HTTP API (requires --config-file).
    #[arg(long)]
    no_api: bool,
    /// Log the guest's boot time when it writes to the boot timer device.
    #[arg(long)]
    boot_timer: bool,
    /// Instance id used in log lines and `GET /`.
    #[arg(long, default_value = "anonymous-instance", value_parser = parse_id)]
    id: String,
    /// Log level: Error, Warning, Info, Debug, Trace or Off.
    #[arg(long, default_value = "Info", value_parser = palisade::logger::parse_level)]
    level: log::LevelFilter,
    /// Write the log to this file or named pipe instead of stderr.
    #[arg(long, value_name = "PATH")]
    log_path: Option<String>,
    /// Write metrics to this file or named pipe.
    #[arg(long, value_name = "PATH")]
    metrics_path: Option<String>,
    /// Largest API request body in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = palisade::api::DEFAULT_MAX_PAYLOAD)]
    http_api_max_payload_size: usize,
    /// Largest MMDS data store in bytes of compact JSON (default: the API payload limit, as
    /// in Firecracker).
    #[arg(long, value_name = "BYTES")]
    mmds_size_limit: Option<usize>,
    /// Fill the MMDS data store from this JSON file at start.
    #[arg(long, value_name = "FILE")]
    metadata: Option<PathBuf>,
    /// Append one JSON line per API request and refused connection to this file.
    #[arg(long, value_name = "PATH")]
    audit_log: Option<String>,
    /// A uid allowed to use the API (repeatable; default: this process's euid and 0).
    #[arg(long = "api-allowed-uid", value_name = "UID")]
    api_allowed_uids: Vec<u32>,
    /// Use these seccomp filters (seccompiler JSON with `vmm`, `api` and `vcpu`) instead of
    /// the built-in ones.
    #[arg(long, value_name = "FILE", conflicts_with = "no_seccomp")]
    seccomp_filter: Option<String>,
    /// Run without seccomp filters (for debugging only).
    #[arg(long)]
    no_seccomp: bool,
    /// Do not confine the VMM with its own Landlock layer at InstanceStart.
    #[arg(long)]
    no_landlock: bool,
    /// Put the level in every log line.
    #[arg(long)]
    show_level: bool,
    /// Put the source file and line in every log line.
    #[arg(long)]
    show_log_origin: bool,
    /// Only log lines from modules whose path starts with this.
    #[arg(long, value_name = "MODULE")]
    module: Option<String>,
    /// Authenticate snapshot state files with the key in this file (16 to 1024 raw bytes, 32
    /// or more recommended): create tags them with HMAC-SHA-256, load refuses files not tagged
    /// with it. Without a key, state files carry a SHA-256 that proves integrity only.
    #[arg(long, value_name = "PATH")]
    snapshot_key_file: Option<PathBuf>,
    /// A directory where `PUT /snapshot/create` may create the state and memory files
    /// (repeatable). The VMM's Landlock layer allows no other place to write them.
    #[arg(long = "snapshot-dir", value_name = "DIR")]
    snapshot_dirs: Vec<PathBuf>,
    /// Print the snapshot state file format version this build writes and reads, and exit.
    #[arg(long)]
    snapshot_version: bool,
    /// Print the header of this snapshot state file (format version, sizes) and exit.
    #[arg(long, value_name = "PATH")]
    describe_snapshot: Option<PathBuf>,
    /// Firecracker's jailer passes its start time; accepted for compatibility, unused.
    #[arg(long, value_name = "US", hide = true)]
    start_time_us: Option<u64>,
    /// Firecracker's jailer passes its CPU start time; accepted for compatibility, unused.
    #[arg(long, value_name = "US", hide = true)]
    start_time_cpu_us: Option<u64>,
    /// Firecracker's jailer passes its parent's CPU time; accepted for compatibility, unused.
    #[arg(long, value_name = "US", hide = true)]
    parent_cpu_time_us: Option<u64>,
}

/// Firecracker's rule for instance ids: alphanumeric and '-', 1 to 64 characters.
fn parse_id(s: &str) -> Result<String, String> {
    let ok =
        !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(s.to_string())
    } else {
        Err("an id is 1 to 64 characters of [A-Za-z0-9-]".to_string())
    }
}

fn main() {
    let start = Instant::now();
    one_malloc_arena();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            let _ = e.print();
            std::process::exit(ExitCode::ArgParsing as i32);
        }
    };
    if let Err(e) = logger::init(&cli.id, cli.level) {
        eprintln!("{e}");
    }
    let code = run(&cli, start);
    log_exit(code);
    std::process::exit(code);
}

/// Firecracker's last log line, word for word: tools wait for it to know the VMM ended and how.
fn log_exit(code: i32) {
    if code == 0 {
        log::info!("Firecracker exiting successfully. exit_code=0");
    } else {
        log::error!("Firecracker exiting with error. exit_code={code}");
    }
}

/// Gives every thread the main malloc arena. glibc would make one per thread at its first
/// allocation (a 64 MiB reservation, four syscalls, its first pages touched); the VMM's
/// threads allocate little and mostly from their per-thread caches, so sharing one arena
/// costs no contention worth that. Called before any other thread exists.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt takes no pointers and only sets a malloc parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// `--describe-snapshot`: prints the state file's header (no key needed: nothing is
/// authenticated, so the output says so) and gives the exit code.
fn describe_snapshot(path: &std::path::Path) -> i32 {
    use palisade::snapshot::StateFile;
    let bytes = match StateFile::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return fail(error_chain(&e), ExitCode::BadConfiguration),
    };
    match StateFile::header(&bytes) {
        Ok(h) => {
            println!("format version: {}", h.version);
            println!(
                "tag: {}",
                if h.keyed {
                    "HMAC-SHA-256 (a key is needed to load it)"
                } else {
                    "SHA-256 (integrity only)"
                }
            );
            println!("state size: {} bytes", h.state_len);
            println!("memory file size: {} bytes", h.memory.size);
            println!(
                "memory file hash recorded: {}",
                if h.memory.sha256.is_some() {
                    "yes"
                } else {
                    "no"
                }
            );
            println!("mmds-config: {}", describe_mmds(&bytes));
            println!("(not authenticated: only a load checks the tag)");
            0
        }
        Err(e) => fail(error_chain(&e), ExitCode::BadConfiguration),
    }
}

/// The MMDS configuration a state file records (`none` without MMDS; the data store is
/// never in a state file), as JSON, or why it cannot be read.
fn describe_mmds(bytes: &[u8]) -> String {
    use palisade::snapshot::StateFile;
    use palisade::vmm::machine_state::MachineState;
    let state = StateFile::unverified_state::<MachineState>(bytes);
    match state.map(|s| s.recorded_mmds()) {
        Ok(Ok(None)) => "none".to_string(),
        Ok(Ok(Some(config))) => {
            serde_json::to_string(&config).unwrap_or_else(|e| format!("(cannot encode: {e})"))
        }
        Ok(Err(e)) => format!("(unreadable: {})", error_chain(&e)),
        Err(e) => format!("(unreadable: {})", error_chain(&e)),
    }
}

/// Prints a one-line error and gives the exit code.
fn fail(message: impl std::fmt::Display, code: ExitCode) -> i32 {
    log::error!("{message}");
    eprintln!("Error: {message}");
    code as i32
}

fn run(cli: &Cli, start: Instant) -> i32 {
    // Other processes of the same uid may not read this one's memory (/proc/PID/mem, ptrace)
    // and it never dumps core: tenant memory stays in this process.
    // SAFETY: prctl with PR_SET_DUMPABLE takes no pointers.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return fail(std::io::Error::last_os_error(), ExitCode::VmmError);
    }
    if cli.snapshot_version {
        println!("v{}", palisade::snapshot::format::FORMAT_VERSION);
        return 0;
    }
    if let Some(path) = &cli.describe_snapshot {
        return describe_snapshot(path);
    }
    let snapshot_key = match &cli.snapshot_key_file {
        Some(path) => match palisade::snapshot::SnapshotKey::from_file(path) {
            Ok(key) => Some(Arc::new(key)),
            Err(e) => return fail(error_chain(&e), ExitCode::BadConfiguration),
        },
        None => None,
    };
    if cli.no_api && cli.config_file.is_none() {
        return fail("--no-api needs --config-file", ExitCode::ArgParsing);
    }
    if cli.show_level || cli.show_log_origin || cli.module.is_some() {
        let format = logger::LoggerConfig {
            level: Some(cli.level),
            show_level: Some(cli.show_level),
            show_log_origin: Some(cli.show_log_origin),
            module: cli.module.clone(),
            ..Default::default()
        };
        if let Err(e) = logger::configure(&format) {
            return fail(error_chain(&e), ExitCode::BadConfiguration);
        }
    }
    if let Some(path) = &cli.log_path {
        if let Err(e) = logger::set_log_path(path) {
            return fail(e, ExitCode::BadConfiguration);
        }
    }
    if let Some(path) = &cli.metrics_path {
        if let Err(e) = metrics::init(path) {
            return fail(e, ExitCode::BadConfiguration);
        }
    }
    // Firecracker's first line reads "Running Firecracker vX"; tools look for its start.
    log::info!(
        "Running Firecracker-compatible Palisade v{}",
        env!("CARGO_PKG_VERSION")
    );
    let seccomp = if cli.no_seccomp {
        log::warn!("Seccomp filtering is OFF (--no-seccomp): every thread may make any syscall");
        seccomp::SeccompFilters::disabled()
    } else if let Some(path) = &cli.seccomp_filter {
        match seccomp::SeccompFilters::from_json_file(path) {
            Ok(f) => f,
            Err(e) => return fail(e, ExitCode::BadConfiguration),
        }
    } else {
        seccomp::SeccompFilters::embedded()
    };
    let seccomp = Arc::new(seccomp);
    let exit = match ExitRequest::new() {
        Ok(e) => Arc::new(e),
        Err(e) => return fail(e, ExitCode::VmmError),
    };
    if cli.no_landlock {
        log::warn!("The VMM's Landlock layer is OFF (--no-landlock)");
    }
    let opts = BuildOptions {
        boot_timer: cli.boot_timer,
        exit: exit.clone(),
        seccomp: seccomp.clone(),
        landlock: !cli.no_landlock,
        snapshot_key,
        snapshot_dirs: cli.snapshot_dirs.clone(),
    };
    let mut controller = Controller::new(cli.id.clone(), opts);
    controller.set_mmds_size_limit(cli.mmds_size_limit.unwrap_or(cli.http_api_max_payload_size));
    if let Some(path) = &cli.config_file {
        let loaded = VmConfig::from_file(path).and_then(|c| {
            c.machine_config.validate(host_memory_mib())?;
            Ok::<_, ConfigError>(c)
        });
        match loaded {
            Ok(c) => {
                if let Some(logger) = &c.logger {
                    if let Err(e) = logger::configure(logger) {
                        return fail(error_chain(&e), ExitCode::BadConfiguration);
                    }
                }
                if let Some(metrics) = &c.metrics {
                    if let Err(e) = metrics::init_from_config(metrics) {
                        return fail(error_chain(&e), ExitCode::BadConfiguration);
                    }
                }
                controller.set_resources(VmResources::from(c))
            }
            Err(e) => return fail(e, ExitCode::BadConfiguration),
        }
    }
    if let Some(path) = &cli.metadata {
        if let Err(e) = load_metadata(&mut controller, path) {
            return fail(e, ExitCode::BadConfiguration);
        }
    }
    let api = if cli.no_api {
        None
    } else {
        match start_api(cli, seccomp) {
            Ok(channel) => {
                let api_server = &metrics::METRICS.api_server;
                api_server
                    .process_startup_time_us
                    .store(start.elapsed().as_micros() as u64);
                api_server
                    .process_startup_time_cpu_us
                    .store(devices::boot_timer::process_cpu_time_us());
                if cli.config_file.is_none() {
                    // The socket answers first; the KVM VM is made while the client configures.
                    controller.prepare_vm();
                }
                Some(channel)
            }
            Err(e) => return fail(e, ExitCode::VmmError),
        }
    };
    match event_loop::run(controller, exit, api, cli.config_file.is_some()) {
        Ok(code) => code,
        Err(RunError::Start(e)) => fail(error_chain(&e), e.exit_code()),
        Err(e) => fail(error_chain(&e), ExitCode::VmmError),
    }
}

/// Largest `--metadata` file read (its JSON may be pretty-printed: the store's limit applies
/// to the compact form).
const MAX_METADATA_FILE: u64 = 16 << 20;

/// Fills the MMDS data store from the `--metadata` file.
fn load_metadata(controller: &mut Controller, path: &std::path::Path) -> Result<(), String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| format!("Cannot read the metadata file {}: {e}", path.display()))?;
    let mut text = Vec::new();
    file.take(MAX_METADATA_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("Cannot read the metadata file {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_METADATA_FILE {
        return Err(format!(
            "The metadata file {} is larger than {MAX_METADATA_FILE} bytes",
            path.display()
        ));
    }
    let data = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "The metadata file {} is not valid JSON: {e}",
            path.display()
        )
    })?;
    controller
        .put_metadata(data)
        .map_err(|e| format!("Populating MMDS from file failed: {}", e.fault_message()))?;
    log::info!("Successfully added metadata to mmds from file");
    Ok(())
}

/// Binds the socket, opens the audit log and starts the api thread.
fn start_api(cli: &Cli, seccomp: Arc<seccomp::SeccompFilters>) -> Result<ApiChannel, String> {
    let audit = cli
        .audit_log
        .as_deref()
        .map(api::audit::AuditLog::open)
        .transpose()
        .map_err(|e| e.to_string())?;
    if let Some(log) = &audit {
        // Devices (MMDS reads) append their records to the same file.
        let device_log = log.try_clone().map_err(|e| format!("audit log: {e}"))?;
        palisade::audit::install_device_log(device_log);
    }
    let listener = api::bind(&cli.api_sock).map_err(|e| e.to_string())?;
    let allowed_uids = if cli.api_allowed_uids.is_empty() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        vec![euid, 0]
    } else {
        cli.api_allowed_uids.clone()
    };
    let (request_tx, request_rx) = mpsc::channel();
    let (response_tx, response_rx) = mpsc::channel();
    let event = EventFd::new(EFD_NONBLOCK).map_err(|e| e.to_string())?;
    let link = VmmLink {
        requests: request_tx,
        responses: response_rx,
        event: event.try_clone().map_err(|e| e.to_string())?,
    };
    let config = ServerConfig {
        allowed_uids,
        audit,
        max_payload: cli.http_api_max_payload_size,
    };
    api::spawn(listener, config, link, seccomp).map_err(|e| e.to_string())?;
    Ok(ApiChannel {
        requests: request_rx,
        responses: response_tx,
        event,
    })
}
