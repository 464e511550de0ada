//! Step 2: close every inherited file descriptor above stderr and clear the environment, so
//! nothing the caller had open or set reaches the VMM.

#[derive(Debug, thiserror::Error)]
pub enum FdsError {
    #[error("Cannot close inherited file descriptors")]
    Close(#[source] std::io::Error),
}

/// Closes fds 3 and up and removes every environment variable.
pub fn close_inherited_and_clear_env() -> Result<(), FdsError> {
    close_from(3)?;
    for (name, _) in std::env::vars_os() {
        std::env::remove_var(name);
    }
    Ok(())
}

fn close_from(first: u32) -> Result<(), FdsError> {
    // SAFETY: close_range only closes descriptors; nothing in this single-threaded process
    // holds one above stderr yet, so no live object loses its fd.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(FdsError::Close(err));
    }
    // Kernels before 5.9: close one by one up to the descriptor limit.
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_err(|e| FdsError::Close(e.into()))?;
    for fd in first..u32::try_from(soft).unwrap_or(u32::MAX).min(1 << 20) {
        // SAFETY: closing a descriptor number nothing in this process uses (see above).
        unsafe { libc::close(fd as libc::c_int) };
    }
    Ok(())
}
