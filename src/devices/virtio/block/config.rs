//! The configuration of a drive (`drives[]`, `PUT|PATCH /drives/{drive_id}`), beside the
//! device it configures; `crate::config` gathers it into the whole VM's configuration.

use serde::{Deserialize, Serialize};

use crate::devices::valid_resource_id;
use crate::rate_limiter::RateLimiterConfig;

/// Why a drive is refused on its own.
#[derive(Debug, thiserror::Error)]
pub enum BlockConfigError {
    /// `drive_id` breaks Firecracker's rule for resource ids.
    #[error("invalid drive_id '{0}': 1 to 64 characters of [A-Za-z0-9_]")]
    InvalidId(String),
    /// The backing file does not open with the access the drive needs.
    #[error("drive {drive_id}: cannot open {path}: {source}")]
    Open {
        /// The drive.
        drive_id: String,
        /// Its `path_on_host`.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `io_engine: "Async"` on a host whose kernel refuses io_uring, or its restrictions.
    #[error("drive {drive_id}: io_engine Async needs a restricted io_uring, which this host refuses: {source}")]
    IoUring {
        /// The drive.
        drive_id: String,
        /// Why.
        source: super::uring::UringError,
    },
    /// `socket`: a vhost-user drive, which Palisade does not build.
    #[error("drive {0}: vhost-user drives ('socket') are not supported by Palisade: its block devices are backed by a file (path_on_host)")]
    VhostUser(String),
    /// Neither `path_on_host` nor `socket`.
    #[error("drive {0}: path_on_host is required")]
    NoPath(String),
}

/// `drives[].cache_type`: whether guest flushes reach the disk.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum CacheType {
    /// Flushes are not offered; writes stay in the host page cache.
    #[default]
    Unsafe,
    /// The device offers VIRTIO_BLK_F_FLUSH and a flush is an fdatasync.
    Writeback,
}

/// `drives[].io_engine`: how reads and writes reach the backing file.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum IoEngine {
    /// Reads and writes on the VMM thread, one request at a time.
    #[default]
    Sync,
    /// Reads and writes through io_uring, up to a queue's worth in flight; their completions
    /// come back on the VMM thread's event loop (flushes and GET_ID stay synchronous). A host
    /// whose kernel refuses io_uring refuses the drive; there is no fallback to `Sync`.
    Async,
}

/// A `drives` entry and the body of `PUT /drives/{drive_id}` (Firecracker's
/// `BlockDeviceConfig`, virtio-blk with a file backend).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceConfig {
    /// Unique id, also the virtio-blk serial (GET_ID).
    pub drive_id: String,
    /// The backing file or block device.
    #[serde(default)]
    pub path_on_host: String,
    /// The guest's root file system: `root=` and `ro`/`rw` go on the command line.
    #[serde(default)]
    pub is_root_device: bool,
    /// Refuse guest writes (the file is opened read-only).
    #[serde(default)]
    pub is_read_only: bool,
    /// `root=PARTUUID=...` instead of `root=/dev/vda` for a root device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Flush semantics.
    #[serde(default)]
    pub cache_type: CacheType,
    /// I/O limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// The I/O engine.
    #[serde(default)]
    pub io_engine: IoEngine,
    /// Firecracker's vhost-user backend socket; only `null` is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// `PATCH /drives/{drive_id}` after boot (Firecracker's `BlockDeviceUpdateConfig`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceUpdate {
    /// Which drive.
    pub drive_id: String,
    /// A new backing file.
    pub path_on_host: Option<String>,
    /// New limits; an absent bucket is kept.
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl BlockDeviceConfig {
    /// Checks the drive on its own: its id, and that its file opens with the access it needs.
    pub fn validate(&self) -> Result<(), BlockConfigError> {
        if !valid_resource_id(&self.drive_id) {
            return Err(BlockConfigError::InvalidId(self.drive_id.clone()));
        }
        if self.socket.is_some() {
            return Err(BlockConfigError::VhostUser(self.drive_id.clone()));
        }
        if self.path_on_host.is_empty() {
            return Err(BlockConfigError::NoPath(self.drive_id.clone()));
        }
        if self.partuuid.is_some() && !self.is_root_device {
            log::info!(
                "drive {}: partuuid is used only for a root device",
                self.drive_id
            );
        }
        let file =
            super::disk::open_backing(&self.path_on_host, self.is_read_only).map_err(|source| {
                BlockConfigError::Open {
                    drive_id: self.drive_id.clone(),
                    path: self.path_on_host.clone(),
                    source,
                }
            })?;
        if self.io_engine == IoEngine::Async {
            use std::os::fd::AsRawFd;
            super::uring::check_available(file.as_raw_fd()).map_err(|source| {
                BlockConfigError::IoUring {
                    drive_id: self.drive_id.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }
}
