//! Step 12: `--daemonize`: a new session without a controlling terminal and stdio on
//! /dev/null (opened on the host, before the jail has no /dev/null of its own).

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::unistd::{dup2, setsid};

#[derive(Debug, thiserror::Error)]
pub enum DaemonizeError {
    #[error("Cannot open /dev/null")]
    DevNull(#[source] std::io::Error),
    #[error("setsid failed")]
    Setsid(#[source] nix::Error),
    #[error("Cannot redirect fd {0} to /dev/null")]
    Redirect(i32, #[source] nix::Error),
}

pub fn open_dev_null() -> Result<File, DaemonizeError> {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(DaemonizeError::DevNull)
}

/// setsid, then stdin, stdout and stderr onto `dev_null`.
pub fn detach(dev_null: &File) -> Result<(), DaemonizeError> {
    setsid().map_err(DaemonizeError::Setsid)?;
    for fd in 0..=2 {
        dup2(dev_null.as_raw_fd(), fd).map_err(|e| DaemonizeError::Redirect(fd, e))?;
    }
    Ok(())
}
