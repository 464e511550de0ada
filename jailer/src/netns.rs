//! Step 5: join the network namespace given with `--netns`.

use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("Cannot open {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("Cannot join the network namespace {0}")]
    Join(PathBuf, #[source] nix::Error),
}

/// setns(CLONE_NEWNET) on the file at `path` (e.g. /var/run/netns/NAME).
pub fn join(path: &Path) -> Result<(), NetnsError> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: a FIFO given as --netns fails at setns instead of hanging the start.
    let ns = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| NetnsError::Open(path.to_path_buf(), e))?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Join(path.to_path_buf(), e))
}
