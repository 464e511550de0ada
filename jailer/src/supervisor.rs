//! The split between the jailer on the host and the process it confines.
//!
//! After the host-side preparation the jailer forks (into a new pid namespace with
//! `--new-pid-ns`). The child confines itself step by step and execs the VMM; the parent stays
//! outside the jail: it learns through a close-on-exec pipe whether the exec happened (EOF) or
//! which step failed (one line), so that it can remove what the start created and exit
//! non-zero. Once the VMM runs, the parent exits 0 with `--daemonize`; otherwise it stays as a
//! thin supervisor: it forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2, removes
//! the jail's cgroups when the VMM ends and exits with the VMM's status (128+N for signal N).
//! The VMM is killed if the supervisor dies. `<exec-name>.pid` holds the VMM's pid.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getppid, pipe2, ForkResult, Pid};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("Cannot block signals")]
    Sigmask(#[source] nix::Error),
    #[error("Cannot create the status pipe")]
    Pipe(#[source] nix::Error),
    #[error("Cannot create a pid namespace")]
    PidNamespace(#[source] nix::Error),
    #[error("fork failed")]
    Fork(#[source] nix::Error),
    #[error("Cannot tie the VMM's life to the jailer's")]
    DeathSignal(#[source] std::io::Error),
    #[error("The jailer exited before the VMM started")]
    Orphaned,
}

/// Signals the supervisor passes on to the VMM.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Which side of the fork this process is on.
pub enum Split {
    /// The process to confine; report a failure through `StatusWriter`.
    Jailee(StatusWriter),
    Supervisor(Supervisor),
}

/// Forks. Signals are blocked in the parent from before the fork, so none is lost.
pub fn split(new_pid_ns: bool) -> Result<Split, SupervisorError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    FORWARDED.iter().for_each(|s| set.add(*s));
    let mut old_mask = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old_mask))
        .map_err(SupervisorError::Sigmask)?;
    let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(SupervisorError::Pipe)?;
    if new_pid_ns {
        // Only the children of this process enter it: the next fork makes its pid 1.
        unshare(CloneFlags::CLONE_NEWPID).map_err(SupervisorError::PidNamespace)?;
    }
    let supervisor_pid = Pid::this();
    // SAFETY: the jailer is single-threaded, so the child may run any code after fork.
    match unsafe { fork() }.map_err(SupervisorError::Fork)? {
        ForkResult::Child => {
            drop(read);
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None)
                .map_err(SupervisorError::Sigmask)?;
            Ok(Split::Jailee(StatusWriter {
                write,
                supervisor_pid: (!new_pid_ns).then_some(supervisor_pid),
            }))
        }
        ForkResult::Parent { child } => {
            drop(write);
            Ok(Split::Supervisor(Supervisor {
                child,
                read: std::fs::File::from(read),
                set,
            }))
        }
    }
}

/// The confined side's end of the status pipe (close-on-exec: EOF means the exec happened).
pub struct StatusWriter {
    write: OwnedFd,
    /// The supervisor's pid, when this process can see it (not from inside a new pid ns).
    supervisor_pid: Option<Pid>,
}

impl StatusWriter {
    /// Sends the one-line error to the supervisor and exits.
    pub fn fail(self, line: &str) -> ! {
        let mut pipe = std::fs::File::from(self.write);
        let _ = pipe.write_all(line.as_bytes());
        drop(pipe);
        // SAFETY: _exit ends the process at once; nothing needs to run after this point.
        unsafe { libc::_exit(1) }
    }

    /// The VMM gets SIGKILL when the supervisor dies. Must run after the uid changes, which
    /// clears the death signal.
    pub fn tie_to_supervisor(&self) -> Result<(), SupervisorError> {
        // SAFETY: PR_SET_PDEATHSIG takes a signal number and changes nothing else.
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        if rc < 0 {
            return Err(SupervisorError::DeathSignal(std::io::Error::last_os_error()));
        }
        match self.supervisor_pid {
            Some(pid) if getppid() != pid => Err(SupervisorError::Orphaned),
            _ => Ok(()),
        }
    }
}

/// The side that stays on the host.
pub struct Supervisor {
    child: Pid,
    read: std::fs::File,
    set: SigSet,
}

impl Supervisor {
    /// The VMM's pid as the host sees it.
    pub fn child(&self) -> Pid {
        self.child
    }

    /// Blocks until the child has exec'd (`None`) or failed (`Some(error line)`); a failed
    /// child has been reaped when this returns.
    pub fn wait_for_exec(&mut self) -> Option<String> {
        let mut line = String::new();
        let _ = self.read.read_to_string(&mut line);
        if line.is_empty() {
            return None;
        }
        let _ = waitpid(self.child, None);
        Some(line)
    }

    /// Kills and reaps the child (a failure on the supervisor's side).
    pub fn kill(&self) {
        let _ = kill(self.child, Signal::SIGKILL);
        let _ = waitpid(self.child, None);
    }

    /// Forwards signals until the VMM exits; returns the exit status to pass on.
    pub fn supervise(&self) -> i32 {
        loop {
            let Ok(signal) = self.set.wait() else {
                continue;
            };
            if signal != Signal::SIGCHLD {
                let _ = kill(self.child, signal);
                continue;
            }
            match waitpid(self.child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
                Err(nix::Error::ECHILD) => return 1,
                _ => {}
            }
        }
    }
}
