//! The command line: Firecracker's jailer flags, plus Landlock's.

use std::path::PathBuf;

use clap::Parser;

/// Firecracker's default chroot base.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";

/// `palisade-jailer [FLAGS] -- [VMM ARGS]`. Flag names and meanings follow Firecracker's jailer.
#[derive(Debug, Parser)]
#[command(
    name = "palisade-jailer",
    version,
    about = "Confines one palisade VMM: namespaces, chroot, cgroups, Landlock, seccomp, no privileges"
)]
pub struct Cli {
    /// Instance id: 1 to 64 characters of [A-Za-z0-9-].
    #[arg(long)]
    pub id: String,
    /// The VMM binary; it is copied into the jail and executed there.
    #[arg(long, value_name = "PATH")]
    pub exec_file: PathBuf,
    /// The uid the VMM runs as.
    #[arg(long)]
    pub uid: u32,
    /// The gid the VMM runs as.
    #[arg(long)]
    pub gid: u32,
    /// The jail is `<chroot-base-dir>/<exec-file name>/<id>/root`.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CHROOT_BASE)]
    pub chroot_base_dir: PathBuf,
    /// Join the network namespace at this path (e.g. /var/run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Start the VMM in a new session with stdio on /dev/null; the jailer exits once it runs.
    #[arg(long)]
    pub daemonize: bool,
    /// Run the VMM as pid 1 of a new pid namespace.
    #[arg(long)]
    pub new_pid_ns: bool,
    /// Write VALUE to the cgroup file FILE of the jail's cgroup (repeatable).
    #[arg(long = "cgroup", value_name = "FILE=VALUE")]
    pub cgroups: Vec<String>,
    /// Cgroup version, 1 or 2 (default: 1 when v1 controllers are mounted, else 2).
    #[arg(long, value_name = "1|2")]
    pub cgroup_version: Option<String>,
    /// Parent of the jail's cgroup, relative to the hierarchy root (default: exec file name).
    #[arg(long, value_name = "PATH")]
    pub parent_cgroup: Option<PathBuf>,
    /// Resource limit `fsize=N` or `no-file=N` (repeatable; no-file defaults to 2048).
    #[arg(long = "resource-limit", value_name = "NAME=N")]
    pub resource_limits: Vec<String>,
    /// Do not apply the jailer's Landlock ruleset.
    #[arg(long)]
    pub no_landlock: bool,
    /// Allow PATH (as seen inside the jail) read-only (`r`) or read-write (`rw`) (repeatable).
    #[arg(long = "landlock-rule", value_name = "PATH:r|rw")]
    pub landlock_rules: Vec<String>,
    /// Arguments for the VMM, after `--`.
    #[arg(last = true, value_name = "VMM ARGS")]
    pub exec_args: Vec<String>,
}

/// Parses the command line; `Err` holds the exit code and a message (help text: code 0).
pub fn parse() -> Result<Cli, (i32, String)> {
    Cli::try_parse().map_err(|e| {
        if e.use_stderr() {
            (1, one_line(&e.to_string()))
        } else {
            (0, e.to_string())
        }
    })
}

/// clap's message without its usage footer, on one line.
fn one_line(text: &str) -> String {
    let body = text.split("\n\nUsage:").next().unwrap_or(text);
    let body = body.strip_prefix("error: ").unwrap_or(body);
    body.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_line() {
        let text = "error: the following required arguments were not provided:\n  --id <ID>\n\n\
                    Usage: palisade-jailer --id <ID>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(text),
            "the following required arguments were not provided: --id <ID>"
        );
    }

    #[test]
    fn firecracker_command_line_parses() {
        let cli = Cli::try_parse_from([
            "palisade-jailer",
            "--id",
            "vm-1",
            "--exec-file",
            "/usr/bin/palisade",
            "--uid",
            "123",
            "--gid",
            "100",
            "--cgroup",
            "pids.max=10",
            "--cgroup",
            "memory.limit_in_bytes=1G",
            "--resource-limit",
            "no-file=64",
            "--",
            "--no-api",
            "--config-file",
            "/vm.json",
        ])
        .unwrap();
        assert_eq!(cli.cgroups.len(), 2);
        assert_eq!(cli.chroot_base_dir, PathBuf::from(DEFAULT_CHROOT_BASE));
        assert_eq!(cli.exec_args, ["--no-api", "--config-file", "/vm.json"]);
    }
}
