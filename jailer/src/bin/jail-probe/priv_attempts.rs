//! Privileges and processes: namespaces, setuid, kernel modules, kexec, I/O ports, ptrace,
//! signals and the view of host processes.

use crate::{errno_name, Outcome};

/// Info: who the probe runs as, its pid and session, its capability sets.
pub fn identity() -> Outcome {
    let mut header = [0x2008_0522u32, 0];
    let mut data = [0u32; 6];
    // SAFETY: v3 capget writes two 3-word data structs; `data` has room for both.
    let rc = unsafe { libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()) };
    let caps = if rc == 0 {
        format!("{:x}", data.iter().fold(0u64, |a, w| a | u64::from(*w)))
    } else {
        errno_name()
    };
    use nix::unistd::{getgid, getpid, getsid, getuid};
    let (uid, gid, pid) = (getuid(), getgid(), getpid());
    let sid = getsid(None).map(|s| s.as_raw()).unwrap_or(-1);
    // SAFETY: getgroups(0, NULL) only counts the supplementary groups.
    let groups = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    Outcome::allowed(format!(
        "uid={uid} gid={gid} groups={groups} pid={pid} sid={sid} caps={caps}"
    ))
}

pub fn unshare(flag: libc::c_int) -> Outcome {
    // SAFETY: unshare takes flags only.
    Outcome::from_rc(i64::from(unsafe { libc::unshare(flag) }))
}

/// A child that exits at once; the parent reaps it.
fn reap_child(rc: i64) -> Outcome {
    match rc {
        // SAFETY: in the new child: leave without running anything of the parent's.
        0 => unsafe { libc::_exit(0) },
        pid if pid > 0 => {
            // SAFETY: waits for the child just created; status is a valid out-pointer.
            unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
            Outcome::allowed(format!("child {pid} created in a new namespace"))
        }
        _ => Outcome::blocked(errno_name()),
    }
}

pub fn clone_ns(flag: libc::c_int) -> Outcome {
    let flags = (flag | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone without CLONE_VM and with a NULL stack behaves like fork; the child only
    // calls _exit.
    let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    reap_child(rc)
}

/// struct clone_args (linux/sched.h), CLONE_ARGS_SIZE_VER0.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

pub fn clone3_ns(flag: libc::c_int) -> Outcome {
    let args = CloneArgs {
        flags: flag as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: args is a valid clone_args of the size passed; without CLONE_VM the child gets
    // a copy of this stack and only calls _exit.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    reap_child(rc)
}

/// No namespace file is reachable in the jail; the filter must refuse before the kernel
/// looks at the descriptor (EPERM rather than EINVAL).
pub fn setns() -> Outcome {
    // SAFETY: setns takes integers only.
    Outcome::from_rc(i64::from(unsafe { libc::setns(0, libc::CLONE_NEWNET) }))
}

pub fn setuid_root() -> Outcome {
    // SAFETY: setuid and setgid take integers only.
    let uid = unsafe { libc::setuid(0) };
    let uid_err = errno_name();
    // SAFETY: as above.
    let gid = unsafe { libc::setgid(0) };
    let gid_err = errno_name();
    match (uid, gid) {
        (-1, -1) => Outcome::blocked(format!("setuid: {uid_err}, setgid: {gid_err}")),
        _ => Outcome::allowed(format!("setuid returned {uid}, setgid returned {gid}")),
    }
}

pub fn load_module() -> Outcome {
    let image = [0u8; 64];
    let params = c"";
    // SAFETY: image and params are valid for the lengths passed and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            image.as_ptr(),
            image.len(),
            params.as_ptr(),
        )
    };
    Outcome::from_rc(rc)
}

pub fn kexec() -> Outcome {
    // SAFETY: zero segments and a NULL segment list: the kernel reads no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_load,
            0usize,
            0usize,
            std::ptr::null::<u8>(),
            0usize,
        )
    };
    Outcome::from_rc(rc)
}

pub fn io_ports() -> Outcome {
    // SAFETY: iopl takes a level only.
    Outcome::from_rc(unsafe { libc::syscall(libc::SYS_iopl, 3usize) })
}

pub fn ptrace(pid: Option<i32>) -> Outcome {
    let Some(pid) = pid else {
        return Outcome::allowed("no --host-pid given: not tried");
    };
    // SAFETY: PTRACE_ATTACH takes a pid; addr and data are unused.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            pid,
            std::ptr::null_mut::<u8>(),
            std::ptr::null_mut::<u8>(),
        )
    };
    if rc < 0 {
        return Outcome::blocked(format!("pid {pid}: {}", errno_name()));
    }
    // SAFETY: detaches from the process this attempt attached to.
    unsafe {
        libc::ptrace(
            libc::PTRACE_DETACH,
            pid,
            std::ptr::null_mut::<u8>(),
            std::ptr::null_mut::<u8>(),
        )
    };
    Outcome::allowed(format!("attached to pid {pid}"))
}

/// Signal 0: the permission check of a real signal, without harm if it passes.
pub fn signal(pid: Option<i32>) -> Outcome {
    let Some(pid) = pid else {
        return Outcome::allowed("no --host-pid given: not tried");
    };
    // SAFETY: kill with signal 0 only checks.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc < 0 {
        Outcome::blocked(format!("pid {pid}: {}", errno_name()))
    } else {
        Outcome::allowed(format!("may signal pid {pid}"))
    }
}

/// Blocked only when the host process does not exist from here (ESRCH): EPERM still says
/// it is there.
pub fn see_host_processes(pid: Option<i32>) -> Outcome {
    let Some(pid) = pid else {
        return Outcome::allowed("no --host-pid given: not tried");
    };
    // SAFETY: kill with signal 0 only checks.
    let rc = unsafe { libc::kill(pid, 0) };
    let me = nix::unistd::getpid();
    let err = errno_name();
    let proc_visible = std::path::Path::new("/proc/1").exists();
    if rc < 0 && err == "ESRCH" && !proc_visible {
        Outcome::blocked(format!("pid {pid}: ESRCH, own pid {me}, no /proc"))
    } else {
        Outcome::allowed(format!(
            "pid {pid}: {}, own pid {me}, /proc/1 visible: {proc_visible}",
            if rc == 0 { "exists" } else { &err }
        ))
    }
}
