//! Descriptors and the pid file: what the probe inherited across exec and whether any of it,
//! or the host's pid file in the jail, can be written.

use std::os::fd::RawFd;

use crate::{errno_name, io_name, Outcome};

/// Highest descriptor number looked at (the jailer's default RLIMIT_NOFILE is 2048).
const MAX_FD: RawFd = 4096;

/// The descriptors above stderr open in this process (but `own`), with their access mode and
/// type.
fn open_fds(own: Option<RawFd>) -> Vec<(RawFd, libc::c_int, libc::mode_t)> {
    let mut fds = Vec::new();
    for fd in (3..MAX_FD).filter(|fd| Some(*fd) != own) {
        // SAFETY: F_GETFL only reads the flags of `fd` (EBADF when it is not open).
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            continue;
        }
        // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes into `st`, which outlives the call.
        let mode = match unsafe { libc::fstat(fd, &mut st) } {
            0 => st.st_mode & libc::S_IFMT,
            _ => 0,
        };
        fds.push((fd, flags & libc::O_ACCMODE, mode));
    }
    fds
}

fn kind(mode: libc::mode_t) -> &'static str {
    match mode {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "chr",
        _ => "other",
    }
}

/// Info: `fd:access:type` for every descriptor above stderr, e.g. `3:r:file`.
pub fn list(own: Option<RawFd>) -> Outcome {
    let text: Vec<String> = open_fds(own)
        .into_iter()
        .map(|(fd, access, mode)| {
            let access = match access {
                libc::O_RDONLY => "r",
                libc::O_WRONLY => "w",
                _ => "rw",
            };
            format!("{fd}:{access}:{}", kind(mode))
        })
        .collect();
    Outcome::allowed(format!("open fds [{}]", text.join(",")))
}

/// Attack: write to, truncate or chmod every inherited descriptor above stderr (the jailer
/// hands the VMM only its read-only instance lock, which lives in the jail).
pub fn write_inherited(own: Option<RawFd>) -> Outcome {
    let mut written = Vec::new();
    let mut details = Vec::new();
    for (fd, _, mode) in open_fds(own) {
        let byte = b"1";
        // SAFETY: writes one byte from a live buffer to `fd`; at worst the call fails.
        let w = unsafe { libc::write(fd, byte.as_ptr().cast(), 1) };
        let werr = errno_name();
        // SAFETY: ftruncate and fchmod act on `fd` only.
        let t = unsafe { libc::ftruncate(fd, 0) };
        let terr = errno_name();
        // SAFETY: as above.
        let c = unsafe { libc::fchmod(fd, 0o666) };
        let cerr = errno_name();
        if w >= 0 || t == 0 || c == 0 {
            written.push(format!("fd {fd} ({})", kind(mode)));
        }
        details.push(format!(
            "fd {fd} ({}): write {}, ftruncate {}, fchmod {}",
            kind(mode),
            if w >= 0 { "ok".into() } else { werr },
            if t == 0 { "ok".into() } else { terr },
            if c == 0 { "ok".into() } else { cerr },
        ));
    }
    match written.is_empty() {
        true if details.is_empty() => Outcome::blocked("no descriptor above stderr"),
        true => Outcome::blocked(details.join("; ")),
        false => Outcome::allowed(format!(
            "wrote {}: {}",
            written.join(", "),
            details.join("; ")
        )),
    }
}

/// Attack: rewrite, replace or remove the pid file `/<exec>.pid` the orchestrator trusts.
pub fn rewrite_pid_file() -> Outcome {
    let exec = std::env::args().next().unwrap_or_default();
    let pid_file = format!("{exec}.pid");
    let mut done = Vec::new();
    let mut details = Vec::new();
    let open = std::fs::OpenOptions::new().write(true).open(&pid_file);
    match open {
        Ok(_) => done.push("opened for writing"),
        Err(e) => details.push(format!("open: {}", io_name(&e))),
    }
    let moved = format!("{pid_file}.moved");
    match std::fs::rename(&pid_file, &moved) {
        Ok(()) => {
            done.push("renamed");
            let _ = std::fs::rename(&moved, &pid_file);
        }
        Err(e) => details.push(format!("rename: {}", io_name(&e))),
    }
    match done.is_empty() {
        true => Outcome::blocked(format!("{pid_file}: {}", details.join(", "))),
        false => Outcome::allowed(format!("{pid_file}: {}", done.join(", "))),
    }
}
