//! Step 13: exec the VMM inside the jail with an empty environment, as Firecracker's jailer
//! does: `/<exec-name> --id <id> <VMM args...>`.
//!
//! The descriptors that cross exec are listed, and nothing else does: stdin, stdout and
//! stderr (the caller's, or /dev/null with `--daemonize`) and the instance lock, a read-only
//! descriptor of the pid file inside the jail. Every other descriptor is marked close-on-exec
//! right before the exec, whoever opened it.

use std::ffi::{CString, NulError};
use std::io::Read;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::unistd::execve;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("An argument holds a NUL byte")]
    Nul(#[from] NulError),
    #[error("Cannot keep the instance lock open across exec")]
    KeepLock(#[source] nix::Error),
    #[error("Cannot mark descriptors close-on-exec")]
    CloseOnExec(#[source] std::io::Error),
    #[error("Cannot execute {0}")]
    Exec(PathBuf, #[source] nix::Error),
}

/// Replaces this process with the VMM; returns only on failure. `keep_fd` (the instance
/// lock) stays open in the VMM; every other descriptor is close-on-exec.
pub fn exec(exec_file: &Path, id: &str, args: &[String], keep_fd: RawFd) -> ExecError {
    match try_exec(exec_file, id, args, keep_fd) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

fn try_exec(
    exec_file: &Path,
    id: &str,
    args: &[String],
    keep_fd: RawFd,
) -> Result<std::convert::Infallible, ExecError> {
    let path = CString::new(exec_file.as_os_str().as_encoded_bytes())?;
    let mut argv = vec![path.clone(), CString::new("--id")?, CString::new(id)?];
    for a in args {
        argv.push(CString::new(a.as_str())?);
    }
    close_on_exec_all_but(keep_fd)?;
    fcntl(keep_fd, FcntlArg::F_SETFD(FdFlag::empty())).map_err(ExecError::KeepLock)?;
    let env: [CString; 0] = [];
    execve(&path, &argv, &env).map_err(|e| ExecError::Exec(exec_file.to_path_buf(), e))
}

/// Marks every descriptor above stderr close-on-exec, except `keep`.
fn close_on_exec_all_but(keep: RawFd) -> Result<(), ExecError> {
    let keep = u32::try_from(keep).unwrap_or(u32::MAX);
    let ranges = [
        (3, keep.saturating_sub(1)),
        (keep.saturating_add(1), u32::MAX),
    ];
    for (first, last) in ranges.into_iter().filter(|(f, l)| f <= l && *f >= 3) {
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first,
                last,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if rc != 0 {
            // Kernels before 5.11: one by one up to the descriptor limit.
            let err = std::io::Error::last_os_error();
            let (soft, _) =
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                    .map_err(|_| ExecError::CloseOnExec(err))?;
            let end = u32::try_from(soft)
                .unwrap_or(u32::MAX)
                .min(last.saturating_add(1));
            for fd in first..end {
                // SAFETY: F_SETFD only sets a flag (EBADF for numbers not in use).
                unsafe { libc::fcntl(fd as libc::c_int, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
    Ok(())
}

/// The ELF interpreter (PT_INTERP) a dynamically linked 64-bit little-endian executable asks
/// for; `None` for static binaries and anything unreadable.
pub fn interpreter(path: &Path) -> Option<PathBuf> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .ok()?;
    elf_interpreter(&head)
}

fn elf_interpreter(elf: &[u8]) -> Option<PathBuf> {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    // 64-bit (class 2), little-endian (data 1).
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(32)?).ok()?;
    let phentsize = usize::from(u16_at(54)?);
    for i in 0..usize::from(u16_at(56)?) {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? == PT_INTERP {
            let offset = usize::try_from(u64_at(ph + 8)?).ok()?;
            let size = usize::try_from(u64_at(ph + 32)?).ok()?;
            let bytes = elf.get(offset..offset.checked_add(size)?)?;
            let name = bytes.split(|b| *b == 0).next()?;
            return Some(PathBuf::from(std::str::from_utf8(name).ok()?));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_interpreter_of_this_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let found = interpreter(&exe);
        // Test binaries are dynamically linked on glibc hosts, static on musl.
        if let Some(p) = found {
            assert!(p.is_absolute(), "{p:?}");
            assert!(p.to_string_lossy().contains("ld"), "{p:?}");
        }
    }

    #[test]
    fn non_elf_and_truncated_input_have_no_interpreter() {
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), None);
        assert_eq!(elf_interpreter(b"\x7fELF\x02\x01\x01"), None);
    }
}
