//! virtio-balloon (virtio 1.x 5.5), Firecracker's `balloon` device: the host sets a target
//! (`num_pages`, from `amount_mib`), the guest driver gives pages to the balloon on the
//! inflate queue and takes them back on the deflate queue, and the host returns inflated
//! pages to the kernel ([`reclaim`]): the VMM's RSS drops by what the guest gave.
//!
//! Everything the guest sends is checked ([`ledger`]): a page outside guest RAM or in an MMIO
//! hole, one already in the balloon, one past the target, one deflated that was never
//! inflated is refused and counted (`refused_pfns`); a chain with a device-writable buffer or a
//! buffer whose length is not a multiple of 4 is refused and counted (`execute_fails`). One
//! chain carries at most [`MAX_PFNS_PER_CHAIN`] page numbers (the rest are refused), and each
//! page number is charged to the drain's budget, so one kick costs the VMM at most about 4,096
//! page numbers of work. Optional queues, numbered by the features the driver accepted
//! ([`core::QueueRoles`]): with `stats_polling_interval_s` a statistics queue ([`stats`]); with
//! `free_page_hinting` a queue on which the guest hints free ranges during a run the host
//! starts and stops ([`hinting`]); with `free_page_reporting` a queue on which the guest
//! reports free ranges ([`reporting`]). Hinted and reported ranges are given back like
//! inflated pages. Snapshots carry the device's state ([`snapshot`]).

mod core;
mod events;
mod hinting;
mod ledger;
mod queues;
mod reclaim;
mod reporting;
mod snapshot;
mod stats;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

use self::core::{each_core, serve, BalloonCore, QueueRoles};
pub use self::hinting::{HintingState, HintingStatus, StartHintingCmd};
use self::ledger::Ledger;
pub use self::ledger::{LedgerStateError, PfnRefusal, PAGE_SIZE};
use self::queues::Work;
pub use self::snapshot::{BalloonState, BalloonStateError};
pub use self::stats::BalloonStats;
use super::chain::Segment;
use super::device_core::{DeviceCore, DeviceLabel};
use super::queue::MAX_QUEUE_SIZE;
use super::VIRTIO_F_VERSION_1;
use crate::logger::RateLimitedLog;
use crate::metrics::BalloonDeviceMetrics;
use crate::vstate::memory::{Backing, MemoryOptions};

/// Feature bit: the device has a statistics queue.
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
/// Feature bit: the device has a free page hinting queue.
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u64 = 1 << 3;
/// Feature bit: the device has a free page reporting queue.
pub const VIRTIO_BALLOON_F_PAGE_REPORTING: u64 = 1 << 5;
/// Feature bit: the guest may deflate the balloon when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// The most page numbers one chain carries (Linux sends at most 256).
pub const MAX_PFNS_PER_CHAIN: usize = 1024;
/// What one page number costs in the drain's byte budget: 4,096 of them fill it.
pub(crate) const PFN_COST: u64 = 256;
/// Pages in a MiB.
const PAGES_PER_MIB: u32 = (1 << 20) / PAGE_SIZE as u32;

pub(crate) static BAD_REQUEST_LOG: RateLimitedLog = RateLimitedLog::new();

/// The `balloon` section and the body of `PUT /balloon` (Firecracker's fields).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// The balloon's target size.
    pub amount_mib: u32,
    /// Whether the guest may deflate the balloon when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Seconds between statistics requests (0: no statistics queue).
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Free page hinting: a queue on which the guest hints free ranges during a run the host
    /// starts (`PATCH /balloon/hinting/start`).
    #[serde(default)]
    pub free_page_hinting: bool,
    /// Free page reporting: a queue on which the guest reports free ranges.
    #[serde(default)]
    pub free_page_reporting: bool,
}

impl BalloonConfig {
    /// Refuses a target larger than guest memory (`PUT /balloon`, the config file, a
    /// restored snapshot's configuration).
    pub fn check_fits(&self, mem_size_mib: usize) -> Result<(), BalloonError> {
        match u64::from(self.amount_mib) > mem_size_mib as u64 {
            true => Err(BalloonError::TooLarge),
            false => Ok(()),
        }
    }
}

/// The body of `PATCH /balloon`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// The new target size.
    pub amount_mib: u32,
}

/// The body of `PATCH /balloon/statistics`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    /// Seconds between statistics requests.
    pub stats_polling_interval_s: u16,
}

/// Errors of balloon device creation and updates.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// An eventfd cannot be created.
    #[error("Cannot create an event for the balloon device")]
    Event(#[from] std::io::Error),
    /// A hinting request to a balloon without free page hinting.
    #[error("Attempting to use hinting when not enabled")]
    HintingNotEnabled,
    /// Guest memory the balloon cannot give back.
    #[error("A balloon cannot give back {0}")]
    Memory(&'static str),
    /// The target is larger than guest memory.
    #[error("Amount of pages requested is too large.")]
    TooLarge,
    /// No balloon is configured.
    #[error("No balloon device found.")]
    NotFound,
    /// The driver has not activated the device yet.
    #[error("Device not activated yet.")]
    NotActive,
    /// Statistics asked of a balloon without a statistics queue.
    #[error("Received stats query when stats are disabled.")]
    StatsDisabled,
    /// A statistics interval for a balloon without a statistics queue.
    #[error("Statistics cannot be enabled/disabled after activation.")]
    StatsStateChange,
    /// `PATCH /balloon` past guest memory (Firecracker's words, which name the request).
    #[error("Requested memory should be less than {0}MiB")]
    TooMuchMemoryRequested(u32),
}

/// Refuses guest memory whose pages madvise cannot give back 4 KiB at a time.
pub fn check_memory_options(opts: &MemoryOptions) -> Result<(), BalloonError> {
    if opts.lock {
        return Err(BalloonError::Memory("locked guest memory"));
    }
    if opts.backing == Backing::Huge2M {
        return Err(BalloonError::Memory("memory backed by 2 MiB huge pages"));
    }
    Ok(())
}

/// The balloon device.
pub struct Balloon {
    core: BalloonCore,
    /// The target, in 4 KiB pages (config space `num_pages`).
    target_pages: u32,
    /// What the driver says the balloon holds (config space `actual`).
    actual_pages: u32,
    deflate_on_oom: bool,
    ledger: Option<Ledger>,
    segments: Vec<Segment>,
    pfns: Vec<u32>,
    /// Seconds between statistics requests (0: no statistics queue).
    stats_interval_s: u16,
    /// Fires every `stats_interval_s` (present with the statistics queue).
    stats_timer: Option<TimerFd>,
    /// The statistics buffer the device holds until the next request.
    stats_head: Option<u16>,
    stats: BalloonStats,
    /// The free page hinting run (the host's and the guest's command ids).
    hinting: HintingState,
    metrics: Arc<BalloonDeviceMetrics>,
}

impl Balloon {
    /// A balloon device from its configuration, counting into `metrics` (which the caller
    /// registers as `balloon`).
    pub fn new(
        config: &BalloonConfig,
        metrics: Arc<BalloonDeviceMetrics>,
    ) -> Result<Self, BalloonError> {
        let label = DeviceLabel {
            name: "balloon".to_string(),
            who: "Balloon device".to_string(),
        };
        let mut features = VIRTIO_F_VERSION_1;
        let stats = config.stats_polling_interval_s != 0;
        for (on, bit) in [
            (config.deflate_on_oom, VIRTIO_BALLOON_F_DEFLATE_ON_OOM),
            (stats, VIRTIO_BALLOON_F_STATS_VQ),
            (config.free_page_hinting, VIRTIO_BALLOON_F_FREE_PAGE_HINT),
            (config.free_page_reporting, VIRTIO_BALLOON_F_PAGE_REPORTING),
        ] {
            if on {
                features |= bit;
            }
        }
        let stats_timer = match stats {
            true => Some(TimerFd::new().map_err(|e| BalloonError::Event(e.into()))?),
            false => None,
        };
        let counters = metrics.clone();
        let core = match QueueRoles::of(features).count() {
            2 => BalloonCore::Two(DeviceCore::new(features, label, counters)?),
            3 => BalloonCore::Three(DeviceCore::new(features, label, counters)?),
            4 => BalloonCore::Four(DeviceCore::new(features, label, counters)?),
            _ => BalloonCore::Five(DeviceCore::new(features, label, counters)?),
        };
        Ok(Self {
            core,
            target_pages: config.amount_mib.saturating_mul(PAGES_PER_MIB),
            actual_pages: 0,
            deflate_on_oom: config.deflate_on_oom,
            ledger: None,
            segments: Vec::with_capacity(usize::from(MAX_QUEUE_SIZE)),
            pfns: Vec::with_capacity(MAX_PFNS_PER_CHAIN),
            stats_interval_s: config.stats_polling_interval_s,
            stats_timer,
            stats_head: None,
            stats: BalloonStats::default(),
            hinting: HintingState::default(),
            metrics,
        })
    }

    /// The configuration as `GET /balloon` shows it.
    pub fn config(&self) -> BalloonConfig {
        let offered = |bit| self.offers(bit);
        BalloonConfig {
            amount_mib: self.target_pages / PAGES_PER_MIB,
            deflate_on_oom: self.deflate_on_oom,
            stats_polling_interval_s: self.stats_interval_s,
            free_page_hinting: offered(VIRTIO_BALLOON_F_FREE_PAGE_HINT),
            free_page_reporting: offered(VIRTIO_BALLOON_F_PAGE_REPORTING),
        }
    }

    /// Whether the device offers feature `bit`.
    fn offers(&self, bit: u64) -> bool {
        each_core!(&self.core, c => c.avail_features & bit != 0)
    }

    /// Sets the target (`PATCH /balloon`), at most `mem_mib`, and tells the driver; refused,
    /// as Firecracker does, until the driver activated the device.
    pub fn set_target_mib(&mut self, amount_mib: u32, mem_mib: u32) -> Result<(), BalloonError> {
        if each_core!(&self.core, c => c.active.is_none()) {
            return Err(BalloonError::NotActive);
        }
        if amount_mib > mem_mib {
            return Err(BalloonError::TooMuchMemoryRequested(amount_mib));
        }
        self.target_pages = amount_mib.saturating_mul(PAGES_PER_MIB);
        let signalled = each_core!(&self.core, c => c.interrupt.signal_config_change().is_ok());
        if !signalled {
            self.metrics.event_fails.inc();
        }
        Ok(())
    }

    /// The target in pages.
    pub fn target_pages(&self) -> u32 {
        self.target_pages
    }

    /// What the driver reports the balloon holds, in pages.
    pub fn actual_pages(&self) -> u32 {
        self.actual_pages
    }

    /// The pages the host took back and holds now (checked page numbers, not the driver's word).
    pub fn inflated_pages(&self) -> u32 {
        self.ledger.as_ref().map_or(0, Ledger::count)
    }

    /// `GET /balloon/statistics`: the latest values with the target and the driver's size.
    pub fn latest_stats(&self) -> Result<BalloonStats, BalloonError> {
        if self.stats_timer.is_none() {
            return Err(BalloonError::StatsDisabled);
        }
        Ok(BalloonStats {
            target_pages: self.target_pages,
            actual_pages: self.actual_pages,
            target_mib: self.target_pages / PAGES_PER_MIB,
            actual_mib: self.actual_pages / PAGES_PER_MIB,
            ..self.stats
        })
    }

    /// `PATCH /balloon/statistics`: a new interval; statistics cannot be turned on or off.
    pub fn set_stats_interval(&mut self, seconds: u16) -> Result<(), BalloonError> {
        if self.stats_timer.is_none() || seconds == 0 {
            return Err(BalloonError::StatsStateChange);
        }
        self.stats_interval_s = seconds;
        self.arm_stats_timer();
        Ok(())
    }

    /// Serves the inflate queue (`index` 0) or the deflate queue (1): at most one queue's
    /// worth of chains and about 4,096 page numbers, then yields to the event loop.
    pub fn process_queue(&mut self, index: usize) {
        let (ledger, segments, pfns) = (&mut self.ledger, &mut self.segments, &mut self.pfns);
        let (metrics, target) = (&*self.metrics, self.target_pages);
        each_core!(&mut self.core, core => serve(core, index, |mem, queue, head| {
            let mut work = Work {
                mem,
                ledger: ledger.get_or_insert_with(|| Ledger::new(mem)),
                segments,
                pfns,
                metrics,
                target,
                inflate: index == 0,
            };
            work.chain(queue, head)
        }))
    }
}

#[cfg(test)]
mod hinting_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
