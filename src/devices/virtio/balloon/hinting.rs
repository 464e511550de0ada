//! Free page hinting (VIRTIO_BALLOON_F_FREE_PAGE_HINT, Firecracker's routes): the host starts
//! a run by writing a new command id (2 and up) into config space `free_page_hint_cmd_id`
//! (`PATCH /balloon/hinting/start`); the driver answers on the hinting queue with that id (a
//! 4-byte device-readable buffer), then device-writable buffers over free guest RAM, then the
//! id STOP (0). The device gives each hinted range of the current run back to the host
//! (MADV_DONTNEED, [`super::reclaim`]). The host ends the run with DONE (1)
//! (`PATCH /balloon/hinting/stop`, or at once when the guest says STOP if the run was started
//! with `acknowledge_on_stop`), after which the guest uses its pages again; they fault in as
//! zeros. `GET /balloon/hinting/status` answers the host's and the guest's last command ids.
//!
//! A hint is given back only when it belongs to the run in force (the guest's last id is the
//! host's, and the host's is not STOP or DONE); hints of an ended run are dropped unread, as
//! Firecracker drops them. A hinted buffer outside guest RAM, or not 4 KiB aligned in address
//! and length, and a device-readable buffer other than a 4-byte id, are refused and counted in
//! `free_page_hint_fails`. Each buffer costs one descriptor's share of the drain budget and
//! every 64 bytes given back one byte of it, as reports do: one kick gives back at most 64 MiB,
//! even when one request hints more (its buffers past that are dropped and counted).

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::core::{each_core, serve};
use super::ledger::PAGE_SIZE;
use super::reclaim::discard_range;
use super::{Balloon, BalloonError, VIRTIO_BALLOON_F_FREE_PAGE_HINT};
use crate::devices::virtio::chain::{self, Segment};
use crate::devices::virtio::queue::{charge_descriptors, ChainOutcome, BYTE_BUDGET};
use crate::metrics::BalloonDeviceMetrics;
use crate::vstate::memory::GuestMemory;

/// The command id that stops a run (the guest's end of its hints; the host's idle state).
pub const FREE_PAGE_HINT_STOP: u32 = 0;
/// The command id with which the host ends a run: the guest may use its hinted pages again.
pub const FREE_PAGE_HINT_DONE: u32 = 1;
/// Reported bytes per byte of the drain's budget (as free page reports).
const HINT_COST_DIVISOR: u64 = 64;
/// Most bytes one kick gives back: the drain's budget in hinted bytes (64 MiB, 16 of Linux's
/// 4 MiB requests). The drain checks its budget between requests only, so a request's
/// buffers are held to it too.
const KICK_HINT_BYTES: u64 = BYTE_BUDGET * HINT_COST_DIVISOR;

/// The body of `PATCH /balloon/hinting/start` (optional).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StartHintingCmd {
    /// End the run (DONE) as soon as the guest says STOP.
    #[serde(default = "ack_by_default")]
    pub acknowledge_on_stop: bool,
}

fn ack_by_default() -> bool {
    true
}

impl Default for StartHintingCmd {
    fn default() -> Self {
        Self {
            acknowledge_on_stop: true,
        }
    }
}

/// `GET /balloon/hinting/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HintingStatus {
    /// The command id the host asked for last.
    pub host_cmd: u32,
    /// The command id the guest sent last (none yet: null).
    pub guest_cmd: Option<u32>,
}

/// The state of the hinting run (in snapshots too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintingState {
    /// The command id in config space: STOP, DONE or the run's id.
    pub host_cmd: u32,
    /// The id of the last run started.
    pub last_cmd_id: u32,
    /// The id the guest sent last.
    pub guest_cmd: Option<u32>,
    /// End the run when the guest says STOP.
    pub acknowledge_on_stop: bool,
}

impl HintingState {
    /// Whether a state is one the host could have set: the id in config space is STOP, DONE
    /// or the last run's id.
    pub fn is_consistent(&self) -> bool {
        self.host_cmd <= FREE_PAGE_HINT_DONE || self.host_cmd == self.last_cmd_id
    }
}

impl Balloon {
    fn hinting_offered(&self) -> Result<(), BalloonError> {
        match self.offers(VIRTIO_BALLOON_F_FREE_PAGE_HINT) {
            true => Ok(()),
            false => Err(BalloonError::HintingNotEnabled),
        }
    }

    /// Writes `cmd` into config space and tells the driver; refused until it activated the
    /// device.
    fn set_hint_cmd(&mut self, cmd: u32) -> Result<(), BalloonError> {
        if each_core!(&self.core, c => c.active.is_none()) {
            return Err(BalloonError::NotActive);
        }
        self.hinting.host_cmd = cmd;
        let signalled = each_core!(&self.core, c => c.interrupt.signal_config_change().is_ok());
        if !signalled {
            self.metrics.event_fails.inc();
        }
        Ok(())
    }

    /// `PATCH /balloon/hinting/start`: a new run with the next command id (2 and up).
    pub fn start_hinting(&mut self, cmd: StartHintingCmd) -> Result<(), BalloonError> {
        self.hinting_offered()?;
        let id = match self.hinting.last_cmd_id.wrapping_add(1) {
            id if id <= FREE_PAGE_HINT_DONE => FREE_PAGE_HINT_DONE + 1,
            id => id,
        };
        self.set_hint_cmd(id)?;
        self.hinting.last_cmd_id = id;
        self.hinting.acknowledge_on_stop = cmd.acknowledge_on_stop;
        Ok(())
    }

    /// `PATCH /balloon/hinting/stop`: DONE, the guest may use its hinted pages again.
    pub fn stop_hinting(&mut self) -> Result<(), BalloonError> {
        self.hinting_offered()?;
        self.set_hint_cmd(FREE_PAGE_HINT_DONE)
    }

    /// After a snapshot restore, as Firecracker does: a hinting run in the snapshot does not
    /// go on in the clone; DONE tells the guest it may use its hinted pages again.
    pub fn end_hinting_after_restore(&mut self) {
        if self.hinting_offered().is_ok() {
            // Refused only while inactive: then the driver starts again from STOP.
            let _ = self.set_hint_cmd(FREE_PAGE_HINT_DONE);
        }
    }

    /// `GET /balloon/hinting/status`.
    pub fn hinting_status(&self) -> Result<HintingStatus, BalloonError> {
        self.hinting_offered()?;
        Ok(HintingStatus {
            host_cmd: self.hinting.host_cmd,
            guest_cmd: self.hinting.guest_cmd,
        })
    }

    /// The hinting queue was notified: reads the guest's command ids and gives back the
    /// hints of the run in force, at most one queue's worth of requests and about 64 MiB.
    pub fn process_hint_queue(&mut self) {
        let Some(index) = self.core.active_roles().and_then(|r| r.hint) else {
            return;
        };
        let (segments, metrics, hinting) = (&mut self.segments, &*self.metrics, &mut self.hinting);
        let mut stopped = false;
        let mut left = KICK_HINT_BYTES;
        each_core!(&mut self.core, core => serve(core, index, |mem, queue: &Queue, head| {
            let desc_table = GuestAddress(queue.desc_table());
            if let Err(e) = chain::read_chain(mem, desc_table, queue.size(), head, segments) {
                return ChainOutcome::Broken(e.into());
            }
            let mut run = Run { mem, metrics, hinting, stopped: &mut stopped, left: &mut left };
            let freed: u64 = segments.iter().map(|s| run.segment(s)).sum();
            let moved = freed / HINT_COST_DIVISOR;
            charge_descriptors(ChainOutcome::Moved { used_len: 0, moved }, segments.len())
        }));
        if stopped
            && self.hinting.acknowledge_on_stop
            && self.hinting.host_cmd > FREE_PAGE_HINT_DONE
        {
            // Cannot fail: the device is active (it just served its queue).
            let _ = self.set_hint_cmd(FREE_PAGE_HINT_DONE);
        }
    }
}

/// What serving one hinting request needs.
struct Run<'a> {
    mem: &'a GuestMemory,
    metrics: &'a BalloonDeviceMetrics,
    hinting: &'a mut HintingState,
    /// Set when the guest said STOP (or DONE) last.
    stopped: &'a mut bool,
    /// Bytes this kick may still give back.
    left: &'a mut u64,
}

impl Run<'_> {
    /// One buffer: a command id or a hint; returns the bytes given back.
    fn segment(&mut self, seg: &Segment) -> u64 {
        if !seg.writable {
            let mut id = [0u8; 4];
            if seg.len != 4 || self.mem.read_slice(&mut id, seg.addr).is_err() {
                self.metrics.free_page_hint_fails.inc();
                return 0;
            }
            let id = u32::from_le_bytes(id);
            self.hinting.guest_cmd = Some(id);
            // DONE is the host's word; a driver sending it is taken as stopping (Firecracker).
            *self.stopped = id == FREE_PAGE_HINT_STOP || id == FREE_PAGE_HINT_DONE;
            return 0;
        }
        let host = self.hinting.host_cmd;
        if host <= FREE_PAGE_HINT_DONE || self.hinting.guest_cmd != Some(host) {
            // A hint of an ended run, or before the guest named this run: dropped.
            return 0;
        }
        let len = u64::from(seg.len);
        let aligned = seg.addr.0.is_multiple_of(PAGE_SIZE) && len.is_multiple_of(PAGE_SIZE);
        let in_ram = vm_memory::GuestMemory::check_range(
            self.mem,
            seg.addr,
            seg.len as usize,
            vm_memory::Permissions::Write,
        );
        // Past this kick's bytes (one request can hint all of RAM): dropped, as a hint may be.
        if !aligned || !in_ram || len == 0 || len > *self.left {
            self.metrics.free_page_hint_fails.inc();
            return 0;
        }
        *self.left -= len;
        if !discard_range(self.mem, seg.addr, len) {
            self.metrics.madvise_fails.inc();
            self.metrics.free_page_hint_fails.inc();
            return 0;
        }
        self.metrics.free_page_hint_count.inc();
        self.metrics.free_page_hint_freed.add(len);
        len
    }
}
