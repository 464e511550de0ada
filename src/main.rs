//! `palisade`: a KVM microVM monitor that draws the provider-side security boundary.

mod arch;
mod config;
mod devices;
mod logger;
mod vmm;
mod vstate;

use std::time::Instant;

use clap::Parser;

use crate::config::{host_memory_mib, ConfigError, VmConfig};
use crate::vmm::builder::{build_vm, BuildError, BuildOptions};
use crate::vstate::exit::ExitCode;

/// Command line. Flag names follow Firecracker's where Firecracker has the flag.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, about)]
struct Cli {
    /// Boot at once from this Firecracker-format config file.
    #[arg(long, value_name = "PATH")]
    config_file: Option<String>,
    /// Run without the HTTP API (requires --config-file).
    #[arg(long)]
    no_api: bool,
    /// Log the guest's boot time when it writes to the boot timer device.
    #[arg(long)]
    boot_timer: bool,
    /// Instance id used in log lines.
    #[arg(long, default_value = "anonymous-instance", value_parser = parse_id)]
    id: String,
    /// Log level: Error, Warning, Info, Debug, Trace or Off.
    #[arg(long, default_value = "Info", value_parser = logger::parse_level)]
    level: log::LevelFilter,
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
    std::process::exit(run(&cli, start));
}

fn run(cli: &Cli, start: Instant) -> i32 {
    let Some(path) = cli.config_file.as_deref().filter(|_| cli.no_api) else {
        eprintln!(
            "Error: this version runs only as `palisade --no-api --config-file PATH`; \
             the HTTP API is not available yet"
        );
        return ExitCode::ArgParsing as i32;
    };
    let config = match VmConfig::from_file(path).and_then(|c| {
        c.machine_config.validate(host_memory_mib())?;
        Ok::<_, ConfigError>(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::BadConfiguration as i32;
        }
    };
    let opts = BuildOptions {
        boot_timer: cli.boot_timer,
        start,
    };
    let vmm = match build_vm(&config, opts) {
        Ok(vmm) => vmm,
        Err(e) => {
            eprintln!("Error: {}", error_chain(&e));
            return match e {
                BuildError::Vm(_) => ExitCode::HostUnsupported as i32,
                BuildError::Kernel(_) => ExitCode::BadConfiguration as i32,
                _ => ExitCode::VmmError as i32,
            };
        }
    };
    match vmm.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {}", error_chain(&e));
            ExitCode::VmmError as i32
        }
    }
}

/// "outer: inner: innermost" on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
