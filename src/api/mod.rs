//! The HTTP API on a Unix socket: Firecracker's routes, answered by the VMM thread.
//! The api thread only parses and serialises; it never touches VM state.

pub mod audit;
pub mod http;
pub mod response;
pub mod router;
pub mod server;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::seccomp::{SeccompFilters, ThreadKind};
use crate::vstate::exit::ExitCode;

pub use server::{ServerConfig, VmmLink};

/// Firecracker's default limit on request bodies.
pub const DEFAULT_MAX_PAYLOAD: usize = 51_200;

/// Errors of API setup.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket path is taken.
    #[error("The API socket path {} already exists", path.display())]
    SocketExists {
        /// Path given.
        path: PathBuf,
    },
    /// bind(2) failed.
    #[error("Cannot bind the API socket {}: {source}", path.display())]
    Bind {
        /// Path given.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The thread could not start.
    #[error("Cannot start the api thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Binds the API socket with mode 0600: only its owner (and root) can connect.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    if path.symlink_metadata().is_ok() {
        return Err(ApiError::SocketExists {
            path: path.to_path_buf(),
        });
    }
    // SAFETY: umask only changes this process's file creation mask; no memory is involved.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|source| ApiError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    // Firecracker's line.
    log::info!("Listening on API socket ({path:?}).");
    Ok(listener)
}

/// Starts the `api` thread serving `listener`. The thread installs its seccomp filter
/// before it accepts its first connection.
pub fn spawn(
    listener: UnixListener,
    config: ServerConfig,
    link: VmmLink,
    seccomp: Arc<SeccompFilters>,
) -> Result<JoinHandle<()>, ApiError> {
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            let mut server = match server::ApiServer::new(listener, config, link) {
                Ok(server) => server,
                Err(e) => {
                    log::error!("The API server cannot start: {e}");
                    std::process::exit(ExitCode::VmmError as i32);
                }
            };
            if let Err(e) = seccomp.apply(ThreadKind::Api) {
                log::error!("{e}");
                std::process::exit(ExitCode::VmmError as i32);
            }
            // Firecracker's line, which tools wait for.
            log::info!("API server started.");
            server.run();
        })
        .map_err(ApiError::Spawn)
}
