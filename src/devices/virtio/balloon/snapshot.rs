//! The balloon in a snapshot: what the driver said it holds (`actual`), the statistics buffer
//! the device holds and the latest values, which pages are in the balloon (the ledger's
//! bitmap) and the free page hinting run. The configuration (target, `deflate_on_oom`, statistics interval, reporting) is
//! saved as the device's `PUT /balloon` body and checked as one; the queues and features are
//! the transport's (`mmio_state`).
//!
//! A restored state is hostile input (an unkeyed state file is anyone's who can write it):
//! `actual` at most the guest's RAM pages, a held statistics buffer only on an active device
//! with a statistics queue and an index inside that queue, at most one value per known tag,
//! a bitmap of exactly the size guest memory gives whose every page is guest RAM
//! ([`Ledger::restored`]), and hinting command ids the host could have set, on a device that
//! offers hinting. Nothing changes unless all of it passes.

use serde::{Deserialize, Serialize};
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::super::device_core::DeviceCore;
use super::core::each_core;
use super::hinting::HintingState;
use super::ledger::{Ledger, LedgerStateError, PAGE_SHIFT};
use super::stats::BalloonStats;
use super::{Balloon, VIRTIO_BALLOON_F_FREE_PAGE_HINT};
use crate::vstate::memory::GuestMemory;

/// The balloon's run-time state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonState {
    /// Config space `actual`: what the driver says the balloon holds, in pages.
    pub actual_pages: u32,
    /// The statistics buffer the device holds until the next request.
    pub stats_head: Option<u16>,
    /// The latest statistics, `(tag, value)`.
    pub stats: Vec<(u16, u64)>,
    /// The pages in the balloon, one bit per page frame (absent until the driver first used
    /// the inflate or deflate queue after its last reset).
    pub inflated: Option<Vec<u64>>,
    /// The free page hinting run.
    pub hinting: HintingState,
}

/// Why a balloon state is refused.
#[derive(Debug, thiserror::Error)]
pub enum BalloonStateError {
    /// The state file has a balloon device without its state, or a state without a device.
    #[error("Balloon state and balloon device disagree (a device {0} state)")]
    Presence(&'static str),
    /// `actual` past guest RAM, or set on an inactive device.
    #[error("Balloon state: actual {0} pages, the guest has {1}")]
    Actual(u32, u64),
    /// A held statistics buffer the device cannot hold.
    #[error("Balloon state: statistics buffer {0} cannot be held ({1})")]
    StatsHead(u16, &'static str),
    /// Statistics with an unknown or repeated tag.
    #[error("Balloon state: statistics with an unknown or repeated tag")]
    Stats,
    /// Inflated pages on a device the driver has not activated.
    #[error("Balloon state: inflated pages on an inactive device")]
    InactiveLedger,
    /// A hinting state the host could not have set, or one on a balloon without hinting.
    #[error("Balloon state: free page hinting command ids the host could not have set")]
    Hinting,
    /// The inflated page bitmap is refused.
    #[error("Balloon state: {0}")]
    Ledger(#[source] LedgerStateError),
}

/// The pages of guest RAM.
pub(super) fn ram_pages(mem: &GuestMemory) -> u64 {
    mem.iter().map(|r| r.len() >> PAGE_SHIFT).sum()
}

impl Balloon {
    /// The run-time state, for a snapshot of the paused VM.
    pub fn save_state(&self) -> BalloonState {
        BalloonState {
            actual_pages: self.actual_pages,
            stats_head: self.stats_head,
            stats: self.stats.entries(),
            inflated: self.ledger.as_ref().map(|l| l.bitmap().to_vec()),
            hinting: self.hinting,
        }
    }

    /// Restores the run-time state of a device built from the saved configuration whose
    /// transport is restored already (the queues are the device's when it was active).
    /// Checked whole before anything changes (see the module docs).
    pub fn restore_state(&mut self, state: &BalloonState) -> Result<(), BalloonStateError> {
        let stats = BalloonStats::from_entries(&state.stats).ok_or(BalloonStateError::Stats)?;
        let hinting = state.hinting;
        let idle = hinting == HintingState::default();
        if !hinting.is_consistent() || (!idle && !self.offers(VIRTIO_BALLOON_F_FREE_PAGE_HINT)) {
            return Err(BalloonStateError::Hinting);
        }
        let stats_queue = self.core.active_roles().and_then(|r| r.stats);
        let ledger = each_core!(&self.core, c => checked_ledger(c, state, stats_queue))?;
        self.actual_pages = state.actual_pages;
        self.stats_head = state.stats_head;
        self.stats = stats;
        self.ledger = ledger;
        self.hinting = hinting;
        Ok(())
    }
}

/// Checks `state` against `core` (see the module docs); the restored ledger when the state has
/// one.
fn checked_ledger<const N: usize>(
    core: &DeviceCore<N>,
    state: &BalloonState,
    stats_queue: Option<usize>,
) -> Result<Option<Ledger>, BalloonStateError> {
    let Some(active) = core.active.as_ref() else {
        if state.actual_pages != 0 {
            return Err(BalloonStateError::Actual(state.actual_pages, 0));
        }
        if let Some(head) = state.stats_head {
            return Err(BalloonStateError::StatsHead(head, "the device is inactive"));
        }
        if state.inflated.is_some() {
            return Err(BalloonStateError::InactiveLedger);
        }
        return Ok(None);
    };
    let pages = ram_pages(&active.mem);
    if u64::from(state.actual_pages) > pages {
        return Err(BalloonStateError::Actual(state.actual_pages, pages));
    }
    if let Some(head) = state.stats_head {
        let queue = stats_queue
            .and_then(|i| active.queues.get(i))
            .ok_or(BalloonStateError::StatsHead(head, "no statistics queue"))?;
        if head >= queue.size() {
            return Err(BalloonStateError::StatsHead(head, "past the queue's size"));
        }
    }
    state
        .inflated
        .as_deref()
        .map(|bits| Ledger::restored(&active.mem, bits))
        .transpose()
        .map_err(BalloonStateError::Ledger)
}
