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
//! page numbers of work. Not yet: the statistics queue, free page hinting and reporting (the
//! configuration refuses them by name), and snapshots of a balloon (refused by the caller).

mod ledger;
mod reclaim;

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;

use self::ledger::Ledger;
pub use self::ledger::{PfnRefusal, PAGE_SIZE};
use self::reclaim::Runs;
use super::buffers::Layout;
use super::chain::{self, Segment};
use super::device_core::{core_accessors, CoreDevice, DeviceCore, DeviceLabel};
use super::queue::{charge_descriptors, drain, ChainOutcome, MAX_QUEUE_SIZE};
use super::VIRTIO_F_VERSION_1;
use crate::logger::RateLimitedLog;
use crate::metrics::BalloonDeviceMetrics;
use crate::vstate::memory::{Backing, GuestMemory, MemoryOptions};

/// Feature bit: the guest may deflate the balloon when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// The most page numbers one chain carries (Linux sends at most 256).
pub const MAX_PFNS_PER_CHAIN: usize = 1024;
/// What one page number costs in the drain's byte budget: 4,096 of them fill it.
const PFN_COST: u64 = 256;
/// Pages in a MiB.
const PAGES_PER_MIB: u32 = (1 << 20) / PAGE_SIZE as u32;

static BAD_REQUEST_LOG: RateLimitedLog = RateLimitedLog::new();

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
    /// Free page hinting (not supported yet).
    #[serde(default)]
    pub free_page_hinting: bool,
    /// Free page reporting (not supported yet).
    #[serde(default)]
    pub free_page_reporting: bool,
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
    Event(#[source] std::io::Error),
    /// A feature the device does not have yet.
    #[error("The balloon's {0} is not supported yet")]
    Unsupported(&'static str),
    /// Guest memory the balloon cannot give back.
    #[error("A balloon cannot give back {0}")]
    Memory(&'static str),
    /// The target is larger than guest memory.
    #[error("Amount of pages requested is too large.")]
    TooLarge,
    /// No balloon is configured.
    #[error("No balloon device found.")]
    NotFound,
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

/// Refuses what the device does not do yet.
pub fn check_config(config: &BalloonConfig) -> Result<(), BalloonError> {
    if config.stats_polling_interval_s != 0 {
        return Err(BalloonError::Unsupported(
            "statistics queue (stats_polling_interval_s)",
        ));
    }
    if config.free_page_hinting {
        return Err(BalloonError::Unsupported("free page hinting"));
    }
    if config.free_page_reporting {
        return Err(BalloonError::Unsupported("free page reporting"));
    }
    Ok(())
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
    core: DeviceCore<2>,
    /// The target, in 4 KiB pages (config space `num_pages`).
    target_pages: u32,
    /// What the driver says the balloon holds (config space `actual`).
    actual_pages: u32,
    deflate_on_oom: bool,
    ledger: Option<Ledger>,
    segments: Vec<Segment>,
    pfns: Vec<u32>,
    metrics: Arc<BalloonDeviceMetrics>,
}

impl Balloon {
    /// A balloon device from its configuration, counting into `metrics` (which the caller
    /// registers as `balloon`).
    pub fn new(
        config: &BalloonConfig,
        metrics: Arc<BalloonDeviceMetrics>,
    ) -> Result<Self, BalloonError> {
        check_config(config)?;
        let label = DeviceLabel {
            name: "balloon".to_string(),
            who: "Balloon device".to_string(),
        };
        let mut features = VIRTIO_F_VERSION_1;
        if config.deflate_on_oom {
            features |= VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        Ok(Self {
            core: DeviceCore::new(features, label, metrics.clone()).map_err(BalloonError::Event)?,
            target_pages: config.amount_mib.saturating_mul(PAGES_PER_MIB),
            actual_pages: 0,
            deflate_on_oom: config.deflate_on_oom,
            ledger: None,
            segments: Vec::with_capacity(usize::from(MAX_QUEUE_SIZE)),
            pfns: Vec::with_capacity(MAX_PFNS_PER_CHAIN),
            metrics,
        })
    }

    /// The configuration as `GET /balloon` shows it.
    pub fn config(&self) -> BalloonConfig {
        BalloonConfig {
            amount_mib: self.target_pages / PAGES_PER_MIB,
            deflate_on_oom: self.deflate_on_oom,
            ..BalloonConfig::default()
        }
    }

    /// Sets the target (`PATCH /balloon`), at most `mem_mib`, and tells an active driver.
    pub fn set_target_mib(&mut self, amount_mib: u32, mem_mib: u32) -> Result<(), BalloonError> {
        if amount_mib > mem_mib {
            return Err(BalloonError::TooMuchMemoryRequested(amount_mib));
        }
        self.target_pages = amount_mib.saturating_mul(PAGES_PER_MIB);
        if self.core.active.is_some() && self.core.interrupt.signal_config_change().is_err() {
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

    /// Serves the inflate queue (`index` 0) or the deflate queue (1): at most one queue's
    /// worth of chains and about 4,096 page numbers, then yields to the event loop.
    pub fn process_queue(&mut self, index: usize) {
        let Some(active) = self.core.active.as_mut() else {
            return;
        };
        if self.core.interrupt.needs_reset() {
            return;
        }
        let mem = &active.mem;
        let ledger = self.ledger.get_or_insert_with(|| Ledger::new(mem));
        let mut work = Work {
            mem,
            ledger,
            segments: &mut self.segments,
            pfns: &mut self.pfns,
            metrics: &self.metrics,
            target: self.target_pages,
            inflate: index == 0,
        };
        let Some(queue) = active.queues.get_mut(index) else {
            return;
        };
        let (end, used_any) = drain(queue, mem, |queue, head| work.chain(queue, head));
        self.core.finish_drain(index, end, used_any);
    }
}

/// What serving one queue needs.
struct Work<'a> {
    mem: &'a GuestMemory,
    ledger: &'a mut Ledger,
    segments: &'a mut Vec<Segment>,
    pfns: &'a mut Vec<u32>,
    metrics: &'a BalloonDeviceMetrics,
    target: u32,
    inflate: bool,
}

impl Work<'_> {
    /// Handles one chain: checks it, reads its page numbers, applies each.
    fn chain(&mut self, queue: &Queue, head: u16) -> ChainOutcome {
        let desc_table = GuestAddress(queue.desc_table());
        if let Err(e) = chain::read_chain(self.mem, desc_table, queue.size(), head, self.segments) {
            return ChainOutcome::Broken(e.into());
        }
        let outcome = self.apply();
        charge_descriptors(outcome, self.segments.len())
    }

    fn apply(&mut self) -> ChainOutcome {
        match Layout::check(self.mem, self.segments) {
            Ok(layout) if layout.writable == 0 => {}
            Ok(_) => return self.refuse("device-writable buffer in a balloon request"),
            Err(e) => return self.refuse(&e.to_string()),
        }
        if let Some(seg) = self.segments.iter().find(|s| s.len % 4 != 0) {
            let why = format!("buffer of {} bytes, not a multiple of 4", seg.len);
            return self.refuse(&why);
        }
        self.read_pfns();
        let mut runs = Runs::default();
        let (mut done, mut refused, mut fails) = (0u64, 0u64, 0u64);
        for &pfn in self.pfns.iter() {
            let result = if self.inflate {
                self.ledger.inflate(self.mem, pfn, self.target)
            } else {
                self.ledger.deflate(pfn)
            };
            match result {
                Ok(()) if self.inflate => {
                    done += 1;
                    fails += runs.push(self.mem, pfn);
                }
                Ok(()) => done += 1,
                Err(e) => {
                    refused += 1;
                    if let Some(n) = BAD_REQUEST_LOG.hit() {
                        log::warn!("Balloon device: page refused: {e} ({n} so far)");
                    }
                }
            }
        }
        fails += runs.flush(self.mem);
        let total = self.total_pfns();
        refused += total.saturating_sub(self.pfns.len() as u64);
        let m = self.metrics;
        let counter = if self.inflate {
            &m.inflated_pages
        } else {
            &m.deflated_pages
        };
        counter.add(done);
        m.refused_pfns.add(refused);
        m.madvise_fails.add(fails);
        ChainOutcome::Moved {
            used_len: 0,
            moved: (self.pfns.len() as u64).saturating_mul(PFN_COST),
        }
    }

    /// The number of page numbers the chain holds (all its buffers are checked already).
    fn total_pfns(&self) -> u64 {
        self.segments.iter().map(|s| u64::from(s.len / 4)).sum()
    }

    /// Reads at most [`MAX_PFNS_PER_CHAIN`] little-endian page numbers from the chain.
    fn read_pfns(&mut self) {
        self.pfns.clear();
        let mut buf = [0u8; 4];
        'segments: for seg in self.segments.iter() {
            for i in 0..u64::from(seg.len / 4) {
                if self.pfns.len() >= MAX_PFNS_PER_CHAIN {
                    break 'segments;
                }
                let addr = GuestAddress(seg.addr.0.wrapping_add(i * 4));
                if self.mem.read_slice(&mut buf, addr).is_err() {
                    break 'segments;
                }
                self.pfns.push(u32::from_le_bytes(buf));
            }
        }
    }

    fn refuse(&self, why: &str) -> ChainOutcome {
        self.metrics.execute_fails.inc();
        if let Some(n) = BAD_REQUEST_LOG.hit() {
            log::warn!("Balloon device: bad request refused: {why} ({n} so far)");
        }
        ChainOutcome::Used(0)
    }
}

impl CoreDevice for Balloon {
    const DEVICE_TYPE: u32 = VIRTIO_ID_BALLOON;
    core_accessors!(core: DeviceCore<2>);

    /// `num_pages` at 0, `actual` at 4 (both little-endian u32).
    fn config_read(&self, offset: u64, data: &mut [u8]) {
        let mut space = [0u8; 8];
        space[..4].copy_from_slice(&self.target_pages.to_le_bytes());
        space[4..].copy_from_slice(&self.actual_pages.to_le_bytes());
        super::read_config_bytes(&space, offset, data);
    }

    /// Only `actual` is the driver's to write, as one 4-byte write.
    fn config_write(&mut self, offset: u64, data: &[u8]) {
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset == 4 => self.actual_pages = u32::from_le_bytes(bytes),
            _ => self.metrics.execute_fails.inc(),
        }
    }

    fn resetting(&mut self) {
        // The driver starts again from an empty balloon; pages it gave stay given back.
        self.ledger = None;
        self.actual_pages = 0;
    }
}

impl MutEventSubscriber for Balloon {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let index = events.data() as usize;
        let count = match index {
            0 => &self.metrics.inflate_count,
            1 => &self.metrics.deflate_count,
            _ => {
                self.core.on_unexpected_event(events.data());
                return;
            }
        };
        self.core.on_queue_event(index, count);
        self.process_queue(index);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let list = self
            .core
            .queue_events
            .iter()
            .enumerate()
            .map(|(i, e)| Events::with_data(e, i as u32, EventSet::IN));
        self.core.watch(ops, list.collect::<Vec<_>>());
    }
}

#[cfg(test)]
mod tests;
