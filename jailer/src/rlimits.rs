//! Step 3: resource limits (soft = hard, so the VMM cannot raise them again).

use nix::sys::resource::{setrlimit, Resource};

use crate::spec::ResourceLimits;

#[derive(Debug, thiserror::Error)]
pub enum RlimitError {
    #[error("Cannot set {0} to {1}")]
    Set(&'static str, u64, #[source] nix::Error),
}

/// Sets RLIMIT_NOFILE and, when asked, RLIMIT_FSIZE.
pub fn apply(limits: &ResourceLimits) -> Result<(), RlimitError> {
    setrlimit(Resource::RLIMIT_NOFILE, limits.no_file, limits.no_file)
        .map_err(|e| RlimitError::Set("no-file", limits.no_file, e))?;
    if let Some(fsize) = limits.fsize {
        setrlimit(Resource::RLIMIT_FSIZE, fsize, fsize)
            .map_err(|e| RlimitError::Set("fsize", fsize, e))?;
    }
    Ok(())
}
