//! `jail-probe`: a test tool. Started by palisade-jailer in place of the VMM, it tries what an
//! attacker who took over the VMM would try and prints one JSON line per attempt:
//! `{"kind":"attack","attempt":"tcp_connect","outcome":"blocked","detail":"EACCES"}`.
//! `kind` is `attack` (must be blocked), `control` (must be allowed: the jail still lets a VMM
//! work) or `info`. Never run it outside a jail: the attacks are real.

mod fd_attempts;
mod fs_attempts;
mod limit_attempts;
mod net_attempts;
mod priv_attempts;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "jail-probe")]
struct Args {
    /// Instance id (the jailer passes it; unused).
    #[arg(long)]
    id: Option<String>,
    /// Run the attempts.
    #[arg(long)]
    attack: bool,
    /// Print `{"kind":"hold"}` and wait for stdin to close first.
    #[arg(long)]
    hold: bool,
    /// Also append every line to this file (inside the jail).
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// A TCP listener on the host to connect to.
    #[arg(long, value_name = "ADDR")]
    connect: Option<std::net::SocketAddr>,
    /// An abstract Unix socket name on the host to connect to.
    #[arg(long = "abstract", value_name = "NAME")]
    abstract_name: Option<String>,
    /// A host process (ideally of the jail's own uid) to signal, trace and look for.
    #[arg(long, value_name = "PID")]
    host_pid: Option<i32>,
    /// A host path (outside the jail) to try to create.
    #[arg(long, value_name = "PATH")]
    outside: Option<PathBuf>,
    /// MiB to allocate in the memory attempt (set above the cgroup limit).
    #[arg(long, default_value_t = 256)]
    mem_mib: usize,
    /// Children to try to fork in the pids attempt.
    #[arg(long, default_value_t = 1024)]
    forks: usize,
}

/// Outcome of one attempt.
pub struct Outcome {
    pub allowed: bool,
    pub detail: String,
}

impl Outcome {
    pub fn allowed(detail: impl Into<String>) -> Self {
        Outcome {
            allowed: true,
            detail: detail.into(),
        }
    }

    pub fn blocked(detail: impl Into<String>) -> Self {
        Outcome {
            allowed: false,
            detail: detail.into(),
        }
    }

    /// From a raw syscall return value: negative is blocked with errno's name.
    pub fn from_rc(rc: i64) -> Self {
        if rc < 0 {
            Outcome::blocked(errno_name())
        } else {
            Outcome::allowed(format!("returned {rc}"))
        }
    }

    pub fn from_io<T>(r: std::io::Result<T>) -> Self {
        match r {
            Ok(_) => Outcome::allowed("succeeded"),
            Err(e) => Outcome::blocked(io_name(&e)),
        }
    }
}

/// `EPERM` for the last OS error.
pub fn errno_name() -> String {
    io_name(&std::io::Error::last_os_error())
}

pub fn io_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
        None => e.to_string(),
    }
}

struct Report {
    out: Option<std::fs::File>,
}

impl Report {
    fn line(&mut self, value: serde_json::Value) {
        let text = format!("{value}\n");
        let _ = std::io::stdout().write_all(text.as_bytes());
        let _ = std::io::stdout().flush();
        if let Some(f) = &mut self.out {
            let _ = f.write_all(text.as_bytes());
        }
    }

    fn attempt(&mut self, kind: &str, name: &str, o: Outcome) {
        let outcome = if o.allowed { "allowed" } else { "blocked" };
        self.line(serde_json::json!({
            "kind": kind, "attempt": name, "outcome": outcome, "detail": o.detail,
        }));
    }
}

fn main() {
    let args = Args::parse();
    let out = args.out.as_ref().map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", p.display()))
    });
    let mut report = Report { out };
    if args.hold {
        report.line(serde_json::json!({"kind": "hold"}));
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    }
    if args.attack {
        attack(&args, &mut report);
    }
    report.line(serde_json::json!({"kind": "done"}));
}

fn attack(args: &Args, r: &mut Report) {
    r.attempt("info", "identity", priv_attempts::identity());
    r.attempt("control", "open_dev_kvm", fs_attempts::open_dev_kvm());
    r.attempt("control", "write_inside_jail", fs_attempts::write_inside());
    // The probe's own --out file is the one descriptor it opened itself.
    let own = r.out.as_ref().map(|f| f.as_raw_fd());
    r.attempt("info", "open_fds", fd_attempts::list(own));
    r.attempt(
        "attack",
        "write_inherited_fds",
        fd_attempts::write_inherited(own),
    );
    r.attempt(
        "attack",
        "rewrite_pid_file",
        fd_attempts::rewrite_pid_file(),
    );

    r.attempt(
        "attack",
        "read_host_passwd",
        fs_attempts::read("/etc/passwd"),
    );
    r.attempt(
        "attack",
        "read_host_proc1_environ",
        fs_attempts::read("/proc/1/environ"),
    );
    r.attempt(
        "attack",
        "write_outside_jail",
        fs_attempts::write_outside(args.outside.as_deref()),
    );
    r.attempt("attack", "mount", fs_attempts::mount());
    r.attempt("attack", "mknod", fs_attempts::mknod());
    r.attempt("attack", "chroot_again", fs_attempts::chroot_again());

    r.attempt(
        "attack",
        "tcp_connect",
        net_attempts::tcp_connect(args.connect),
    );
    r.attempt("attack", "tcp_bind", net_attempts::tcp_bind());
    r.attempt("attack", "raw_socket", net_attempts::raw_socket());
    r.attempt("attack", "packet_socket", net_attempts::packet_socket());
    r.attempt(
        "attack",
        "abstract_unix_connect",
        net_attempts::abstract_unix(args.abstract_name.as_deref()),
    );

    r.attempt(
        "attack",
        "unshare_user_ns",
        priv_attempts::unshare(libc::CLONE_NEWUSER),
    );
    r.attempt(
        "attack",
        "unshare_net_ns",
        priv_attempts::unshare(libc::CLONE_NEWNET),
    );
    r.attempt(
        "attack",
        "clone_user_ns",
        priv_attempts::clone_ns(libc::CLONE_NEWUSER),
    );
    r.attempt(
        "attack",
        "clone_net_ns",
        priv_attempts::clone_ns(libc::CLONE_NEWNET),
    );
    r.attempt(
        "attack",
        "clone3_user_ns",
        priv_attempts::clone3_ns(libc::CLONE_NEWUSER),
    );
    r.attempt("attack", "setns", priv_attempts::setns());
    r.attempt("attack", "setuid_root", priv_attempts::setuid_root());
    r.attempt("attack", "load_kernel_module", priv_attempts::load_module());
    r.attempt("attack", "kexec", priv_attempts::kexec());
    r.attempt("attack", "io_ports", priv_attempts::io_ports());
    r.attempt(
        "attack",
        "ptrace_outside",
        priv_attempts::ptrace(args.host_pid),
    );
    r.attempt(
        "attack",
        "signal_outside",
        priv_attempts::signal(args.host_pid),
    );
    r.attempt(
        "attack",
        "see_host_processes",
        priv_attempts::see_host_processes(args.host_pid),
    );

    r.attempt(
        "attack",
        "exceed_memory_limit",
        limit_attempts::memory(args.mem_mib),
    );
    r.attempt(
        "attack",
        "exceed_pids_limit",
        limit_attempts::pids(args.forks),
    );
    r.attempt("attack", "exceed_no_file_limit", limit_attempts::no_file());
}
