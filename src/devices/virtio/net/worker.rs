//! What one chain of either queue needs of the interface, borrowed while the queue is borrowed
//! too, and the drain that hands it chain by chain to RX's or TX's handler ([`Net::drain_queue`]).

use std::time::Instant;

use palisade_firewall::Firewall;
use virtio_queue::Queue;

use super::mmds::MmdsStack;
use super::tap::Tap;
use super::{GuestLogs, Net, RX};
use crate::devices::virtio::chain::Segment;
use crate::devices::virtio::queue::{charge_descriptors, drain, ChainOutcome, DrainEnd};
use crate::metrics::{Counter, NetDeviceMetrics};
use crate::rate_limiter::RateLimiter;
use crate::vstate::memory::GuestMemory;

/// A frame buffer of [`super::MAX_FRAME`] bytes.
pub struct Frame {
    /// The bytes, virtio-net header first.
    pub buf: Box<[u8]>,
    /// Bytes of a frame waiting in `buf` (0: none). RX: read from the tap and not yet
    /// delivered. TX: always 0, a frame goes out within its chain.
    pub len: usize,
}

impl Frame {
    /// An empty buffer of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self {
            buf: vec![0u8; size].into_boxed_slice(),
            len: 0,
        }
    }
}

/// The parts of the interface one chain needs, with the direction's own `state`.
pub(super) struct Worker<'a, S> {
    pub iface: &'a str,
    pub mem: &'a GuestMemory,
    /// The features the driver accepted.
    pub features: u64,
    pub tap: &'a mut Tap,
    /// The direction's limiter.
    pub limiter: &'a mut RateLimiter,
    pub firewall: Option<&'a mut Firewall>,
    /// The MMDS responder, on an interface with MMDS.
    pub mmds: Option<&'a mut MmdsStack>,
    pub segments: &'a mut Vec<Segment>,
    /// The direction's frame buffer.
    pub frame: &'a mut Frame,
    pub metrics: &'a NetDeviceMetrics,
    /// The interface's `mtu`, if set.
    pub mtu: Option<u16>,
    pub logs: &'a GuestLogs,
    pub now: Instant,
    /// What only this direction keeps across the drain.
    pub state: S,
}

impl<S> Worker<'_, S> {
    /// Refuses a chain the guest got wrong: used with length 0, counted in `fails`, logged
    /// (rate limited) as `what`.
    pub fn refuse_chain(
        &self,
        fails: &Counter,
        what: &str,
        why: &dyn std::fmt::Display,
    ) -> ChainOutcome {
        fails.inc();
        if let Some(n) = self.logs.bad_chain.hit() {
            log::warn!("Interface {}: {what}: {why} ({n} so far)", self.iface);
        }
        ChainOutcome::Used(0)
    }
}

impl Net {
    /// Drains queue `index` (RX or TX): every chain goes to `handle` with the parts of the
    /// interface it needs; the core then does its part (interrupt, self-kick, needs-reset).
    /// Returns how the drain ended and the direction's state; `None` when the queue is not
    /// served now (inactive, needs a reset, or its limiter blocked).
    pub(super) fn drain_queue<S>(
        &mut self,
        index: usize,
        state: S,
        mut handle: impl FnMut(&mut Worker<'_, S>, &Queue, u16) -> ChainOutcome,
    ) -> Option<(DrainEnd, S)> {
        self.with_worker(index, state, |worker, queue| {
            let mem = worker.mem;
            drain(queue, mem, |q, head| {
                let outcome = handle(worker, q, head);
                charge_descriptors(outcome, worker.segments.len())
            })
        })
    }

    /// Runs `run` on queue `index` with a [`Worker`] for it (a drain of the queue that returns
    /// how it ended and whether it used any chain), then lets the core do its part after the
    /// drain. `None` when the queue is not served now.
    pub(super) fn with_worker<S>(
        &mut self,
        index: usize,
        state: S,
        run: impl FnOnce(&mut Worker<'_, S>, &mut Queue) -> (DrainEnd, bool),
    ) -> Option<(DrainEnd, S)> {
        let (limiter, frame) = if index == RX {
            (&mut self.rx_limiter, &mut self.rx_frame)
        } else {
            (&mut self.tx_limiter, &mut self.tx_frame)
        };
        let active = self.core.serving(limiter, None)?;
        let queue = active.queues.get_mut(index)?;
        let mut worker = Worker {
            iface: &self.id,
            mem: &active.mem,
            features: active.features,
            tap: &mut self.tap,
            limiter,
            firewall: self.firewall.as_mut(),
            mmds: self.mmds.as_mut(),
            segments: &mut self.segments,
            frame,
            metrics: &self.metrics,
            mtu: self.mtu,
            logs: &self.logs,
            now: Instant::now(),
            state,
        };
        let (end, used_any) = run(&mut worker, queue);
        let state = worker.state;
        Some((self.core.finish_drain(index, end, used_any), state))
    }
}
