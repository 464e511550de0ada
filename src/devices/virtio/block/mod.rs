//! virtio-blk with a file backend, configured like Firecracker's `drives`.
//!
//! One queue of 256 entries. Features: VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, plus
//! VIRTIO_BLK_F_FLUSH for `cache_type: Writeback` and VIRTIO_BLK_F_RO for read-only drives,
//! VIRTIO_BLK_F_SEG_MAX and VIRTIO_BLK_F_SIZE_MAX always: they bound an honest driver's
//! request to [`request::MAX_DATA_BYTES`], and larger ones are refused. The configuration
//! space is the capacity in sectors, `size_max` and `seg_max`. Requests run on the VMM thread
//! ([`event_handler`]), or, with `io_engine: "Async"`, reads and writes go through io_uring
//! ([`uring`]) and complete on the VMM thread's event loop; the drive can change its file and
//! its rate limiter at run time (`PATCH /drives/{id}`).

pub mod config;
pub mod disk;
pub mod event_handler;
pub mod exec;
pub mod request;
pub mod uring;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use self::config::{BlockDeviceConfig, CacheType, IoEngine};
use self::disk::{Disk, DiskError};
use self::request::{ID_BYTES, SEG_MAX, SIZE_MAX};
use self::uring::{AsyncEngine, Completion, UringError, QUIESCE_TIMEOUT};
use super::chain::Segment;
use super::device_core::{core_accessors, CoreDevice, DeviceCore, DeviceLabel};
use super::queue::MAX_QUEUE_SIZE;
use super::{read_config_bytes, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::logger::RateLimitedLog;
use crate::metrics::BlockDeviceMetrics;
use crate::rate_limiter::{
    BucketUpdate, RateLimiter, RateLimiterConfig, RateLimiterError, RateLimiterState,
    RateLimiterStateError,
};

/// Errors of drive creation and update.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// An eventfd cannot be created.
    #[error("Cannot create an event for drive {0}")]
    Event(String, #[source] std::io::Error),
    /// The rate limiter's timer cannot be created.
    #[error(transparent)]
    RateLimiter(#[from] RateLimiterError),
    /// `io_engine: "Async"` and the host refuses io_uring.
    #[error("Drive {0}: {1}")]
    Uring(String, #[source] UringError),
}

/// Logs a guest can trigger, each rate limited.
#[derive(Default)]
struct GuestLogs {
    bad_request: RateLimitedLog,
    io_error: RateLimitedLog,
    orphaned: RateLimitedLog,
}

/// A virtio-blk device.
pub struct Block {
    id: String,
    id_bytes: [u8; ID_BYTES],
    disk: Disk,
    read_only: bool,
    is_root: bool,
    partuuid: Option<String>,
    cache: CacheType,
    core: DeviceCore<1>,
    limiter: RateLimiter,
    /// Reused for every chain: never more than the queue size.
    segments: Vec<Segment>,
    metrics: Arc<BlockDeviceMetrics>,
    logs: GuestLogs,
    /// The io_uring of an `Async` drive.
    engine: Option<AsyncEngine>,
    /// Reused for every batch of completions: never more than the engine's slots.
    completions: Vec<Completion>,
}

impl Block {
    /// A drive from its configuration: opens the file and sets up the limiter.
    pub fn new(
        config: &BlockDeviceConfig,
        metrics: Arc<BlockDeviceMetrics>,
    ) -> Result<Self, BlockError> {
        let disk = Disk::open(&config.path_on_host, config.is_read_only)?;
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_SIZE_MAX;
        if config.cache_type == CacheType::Writeback {
            features |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        if config.is_read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut id_bytes = [0u8; ID_BYTES];
        let n = config.drive_id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&config.drive_id.as_bytes()[..n]);
        let limiter = RateLimiter::new(&config.rate_limiter.unwrap_or_default())?;
        let engine = match config.io_engine {
            IoEngine::Sync => None,
            IoEngine::Async => Some(
                AsyncEngine::new(disk.as_raw_fd())
                    .map_err(|e| BlockError::Uring(config.drive_id.clone(), e))?,
            ),
        };
        let label = DeviceLabel {
            name: format!("block {}", config.drive_id),
            who: format!("Drive {}", config.drive_id),
        };
        Ok(Self {
            id: config.drive_id.clone(),
            id_bytes,
            disk,
            read_only: config.is_read_only,
            is_root: config.is_root_device,
            partuuid: config.partuuid.clone(),
            cache: config.cache_type,
            core: DeviceCore::new(features, label, metrics.clone())
                .map_err(|e| BlockError::Event(config.drive_id.clone(), e))?,
            limiter,
            segments: Vec::with_capacity(usize::from(MAX_QUEUE_SIZE)),
            metrics,
            logs: GuestLogs::default(),
            engine,
            completions: Vec::with_capacity(usize::from(MAX_QUEUE_SIZE)),
        })
    }

    /// The drive id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// True for the root device.
    pub fn is_root(&self) -> bool {
        self.is_root
    }

    /// The root partition's PARTUUID, if configured.
    pub fn partuuid(&self) -> Option<&str> {
        self.partuuid.as_deref()
    }

    /// True when guest writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The limits now in force.
    pub fn rate_limiter_config(&self) -> RateLimiterConfig {
        self.limiter.to_config()
    }

    /// The I/O engine.
    pub fn io_engine(&self) -> IoEngine {
        if self.engine.is_some() {
            IoEngine::Async
        } else {
            IoEngine::Sync
        }
    }

    /// Waits (at most [`QUIESCE_TIMEOUT`]) for the requests in flight of an `Async` drive and
    /// puts them in the used ring: before a snapshot and a change of backing file. Does
    /// nothing for a `Sync` drive. Returns how many are still in flight (orphans of an earlier
    /// reset included; the others are orphaned now: their completions will be dropped).
    pub fn quiesce(&mut self) -> usize {
        let Some(mut engine) = self.engine.take() else {
            return 0;
        };
        let mut done = std::mem::take(&mut self.completions);
        let left = engine.quiesce(QUIESCE_TIMEOUT, |c| done.push(c));
        self.engine = Some(engine);
        self.complete(&mut done);
        self.completions = done;
        self.log_left_in_flight(left, "after the wait");
        left
    }

    /// Logs (rate limited: a guest can reset at will) that `left` requests of an `Async`
    /// drive are still in flight `when`, their completions to be dropped.
    fn log_left_in_flight(&self, left: usize, when: &str) {
        if left == 0 {
            return;
        }
        if let Some(n) = self.logs.orphaned.hit() {
            log::warn!(
                "Drive {}: {left} requests still in flight {when}; their completions will be \
                 dropped ({n} so far)",
                self.id
            );
        }
    }

    /// The rate limiter's remaining tokens, for a snapshot.
    pub fn save_limiter(&mut self) -> RateLimiterState {
        self.limiter.save_state()
    }

    /// Gives the rate limiter the tokens a snapshot saved (never above its buckets).
    pub fn restore_limiter(
        &mut self,
        state: &RateLimiterState,
    ) -> Result<(), RateLimiterStateError> {
        self.limiter.restore_state(state)
    }

    /// `PATCH path_on_host`: switches to another file and tells the driver its capacity
    /// may have changed.
    /// Requests in flight on the old file finish (bounded wait) before the switch.
    pub fn update_disk(&mut self, path: &str) -> Result<(), BlockError> {
        let disk =
            Disk::open(path, self.read_only).inspect_err(|_| self.metrics.update_fails.inc())?;
        self.quiesce();
        if let Some(engine) = &self.engine {
            engine
                .set_file(disk.as_raw_fd())
                .map_err(|e| BlockError::Uring(self.id.clone(), e))
                .inspect_err(|_| self.metrics.update_fails.inc())?;
        }
        log::info!(
            "Drive {}: {} -> {} ({} sectors)",
            self.id,
            self.disk.path(),
            path,
            disk.sectors()
        );
        self.disk = disk;
        self.metrics.update_count.inc();
        if self.core.active.is_some() && self.core.interrupt.signal_config_change().is_err() {
            self.metrics.event_fails.inc();
        }
        Ok(())
    }

    /// `PATCH rate_limiter`: each bucket kept, removed or replaced.
    pub fn update_rate_limiter(&mut self, config: &RateLimiterConfig) {
        self.limiter.update_buckets(
            BucketUpdate::from_config(config.bandwidth.as_ref()),
            BucketUpdate::from_config(config.ops.as_ref()),
        );
        self.metrics.update_count.inc();
        // Requests that waited for the old limits get a chance under the new ones.
        let _ = self.core.queue_events[0].write(1);
    }
}

impl CoreDevice for Block {
    const DEVICE_TYPE: u32 = VIRTIO_ID_BLOCK;
    core_accessors!(core: DeviceCore<1>);

    fn config_read(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config: capacity (le64), size_max (le32), seg_max (le32).
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.disk.sectors().to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn config_write(&mut self, _offset: u64, _data: &[u8]) {
        self.metrics.cfg_fails.inc();
    }

    /// Requests in flight are orphaned, without waiting for them (this runs on the vCPU
    /// thread that holds the device): nothing reaches the queue the driver is resetting.
    fn resetting(&mut self) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        engine.orphan_in_flight();
        let left = engine.in_flight();
        self.log_left_in_flight(left, "at the driver's reset");
    }
}
