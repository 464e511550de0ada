//! Limits: cgroup memory, cgroup pids, RLIMIT_NOFILE.

use crate::{errno_name, Outcome};

const PAGE: usize = 4096;

/// A child touches `mib` MiB; blocked when it is killed (the cgroup's OOM killer) or cannot
/// map the memory.
pub fn memory(mib: usize) -> Outcome {
    // SAFETY: the probe is single-threaded; the child only maps, touches and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Outcome::blocked(format!("fork: {}", errno_name()));
    }
    if pid == 0 {
        touch(mib << 20);
    }
    let mut status = 0;
    // SAFETY: waits for the child just created; status is a valid out-pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFSIGNALED(status) {
        Outcome::blocked(format!(
            "child killed by signal {} while touching {mib} MiB",
            libc::WTERMSIG(status)
        ))
    } else if libc::WEXITSTATUS(status) == 0 {
        Outcome::allowed(format!("touched {mib} MiB"))
    } else {
        Outcome::blocked(format!("mmap of {mib} MiB failed"))
    }
}

/// In the child: maps `bytes`, writes every page, exits 0 (2 when the map fails).
fn touch(bytes: usize) -> ! {
    // SAFETY: an anonymous private mapping at an address of the kernel's choice.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        // SAFETY: leaves the child at once.
        unsafe { libc::_exit(2) };
    }
    // SAFETY: the mapping is `bytes` long, readable and writable, and nothing else uses it.
    let memory = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), bytes) };
    for offset in (0..bytes).step_by(PAGE) {
        memory[offset] = 1;
    }
    std::hint::black_box(&memory);
    // SAFETY: leaves the child at once.
    unsafe { libc::_exit(0) }
}

/// Forks up to `max` sleeping children; blocked when fork fails first (EAGAIN from pids.max).
pub fn pids(max: usize) -> Outcome {
    let mut children = Vec::new();
    let mut failure = None;
    while children.len() < max {
        // SAFETY: the probe is single-threaded; the child only pauses until killed.
        match unsafe { libc::fork() } {
            0 => loop {
                // SAFETY: pause takes no arguments.
                unsafe { libc::pause() };
            },
            pid if pid > 0 => children.push(pid),
            _ => {
                failure = Some(errno_name());
                break;
            }
        }
    }
    for &pid in &children {
        // SAFETY: kills and reaps a child this attempt created.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // SAFETY: as above; a NULL status pointer is allowed.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    match failure {
        Some(e) => Outcome::blocked(format!(
            "fork failed with {e} after {} children",
            children.len()
        )),
        None => Outcome::allowed(format!("forked {max} children")),
    }
}

/// Duplicates stdout until the process runs out of descriptors.
pub fn no_file() -> Outcome {
    const MAX: usize = 1 << 20;
    let mut fds = Vec::new();
    let mut failure = None;
    while fds.len() < MAX {
        // SAFETY: dup of stdout creates a new descriptor this attempt owns.
        let fd = unsafe { libc::dup(1) };
        if fd < 0 {
            failure = Some(errno_name());
            break;
        }
        fds.push(fd);
    }
    let highest = fds.last().copied().unwrap_or(-1);
    for fd in &fds {
        // SAFETY: closes a descriptor this attempt created.
        unsafe { libc::close(*fd) };
    }
    match failure {
        Some(e) => Outcome::blocked(format!(
            "{e} after {} more descriptors, highest fd {highest}",
            fds.len()
        )),
        None => Outcome::allowed(format!("opened {MAX} descriptors")),
    }
}
