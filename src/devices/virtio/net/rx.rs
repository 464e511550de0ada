//! Receive: frames are read from the tap (with their virtio-net header) into the device's
//! buffer, judged by the firewall (`ingress`), charged to the RX limiter and copied whole into
//! one chain of the RX queue. A frame waits in the device while the guest has no buffer or the
//! limiter is blocked; the tap is read only when that frame has gone. A dropped frame never
//! touches guest memory.
//!
//! The tap is watched edge-triggered: the device reads it until it is empty, or stops with a
//! reason that brings it back (a frame waiting for a buffer: the RX queue notification; the
//! limiter: its timer; the budget: a self-notification).

use std::io;
use std::time::Instant;

use palisade_firewall::{Firewall, Verdict};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::tap::{Tap, VNET_HDR_LEN};
use super::tx::HEADER_PREFIX;
use super::{count_drop, GuestLogs, Net, RX};
use crate::devices::virtio::buffers::{self, Layout};
use crate::devices::virtio::chain::{self, Segment};
use crate::devices::virtio::queue::{
    charge_descriptors, drain, needs_interrupt, ChainOutcome, DrainEnd,
};
use crate::metrics::NetDeviceMetrics;
use crate::rate_limiter::{RateLimiter, TokenType};
use crate::vstate::memory::GuestMemory;

/// Frames the firewall may drop while one chain waits, before the device yields.
const DROPS_PER_CHAIN: usize = 256;
/// Offset of `num_buffers` in the virtio 1.x header.
const NUM_BUFFERS: usize = 10;

/// Why a chain was left in the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// The tap is empty: its next edge brings the device back.
    Tap,
    /// The limiter's timer brings it back.
    Limiter,
    /// Too many drops in a row: come back after the other events.
    Yield,
}

/// What one chain needs of the device, borrowed while the queue is borrowed too.
struct RxWorker<'a> {
    iface: &'a str,
    mem: &'a GuestMemory,
    tap: &'a mut Tap,
    limiter: &'a mut RateLimiter,
    firewall: Option<&'a mut Firewall>,
    segments: &'a mut Vec<Segment>,
    frame: &'a mut [u8],
    len: &'a mut usize,
    metrics: &'a NetDeviceMetrics,
    logs: &'a GuestLogs,
    wait: Option<Wait>,
    now: Instant,
}

impl RxWorker<'_> {
    /// Makes sure a frame the firewall passed waits in `frame`; false when none can be had now.
    fn fill(&mut self) -> bool {
        for _ in 0..DROPS_PER_CHAIN {
            if *self.len > 0 {
                return true;
            }
            let n = match self.tap.read_frame(self.frame) {
                Ok(n) => n,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.metrics.rx_fails.inc();
                        if let Some(n) = self.logs.tap_error.hit() {
                            log::warn!(
                                "Interface {}: tap read failed: {e} ({n} so far)",
                                self.iface
                            );
                        }
                    }
                    self.wait = Some(Wait::Tap);
                    return false;
                }
            };
            if n <= VNET_HDR_LEN {
                self.metrics.rx_fails.inc();
                continue;
            }
            let eth = &self.frame[VNET_HDR_LEN..n];
            let verdict = match self.firewall.as_deref_mut() {
                None => Verdict::Pass,
                Some(fw) if self.frame[1] != 0 => {
                    fw.ingress_headers(&eth[..eth.len().min(HEADER_PREFIX)], eth.len(), self.now)
                }
                Some(fw) => fw.ingress(eth, self.now),
            };
            match verdict {
                Verdict::Pass => *self.len = n,
                Verdict::Drop(reason) => count_drop(self.metrics, reason, false),
            }
        }
        if *self.len > 0 {
            return true;
        }
        self.wait = Some(Wait::Yield);
        false
    }

    fn handle(&mut self, queue: &Queue, head: u16) -> ChainOutcome {
        if !self.fill() {
            return ChainOutcome::Throttled;
        }
        let desc_table = GuestAddress(queue.desc_table());
        if let Err(e) = chain::read_chain(self.mem, desc_table, queue.size(), head, self.segments) {
            return ChainOutcome::Broken(e.into());
        }
        let writable = match Layout::check(self.mem, self.segments) {
            Ok(layout) if layout.readable == 0 => layout.writable as usize,
            Ok(_) => return self.refuse(&"device-readable buffer in an RX chain"),
            Err(e) => return self.refuse(&e),
        };
        let len = *self.len;
        if writable < len {
            // Not a buffer this frame fits in (no mergeable buffers): the frame is lost, the
            // chain goes back empty and the driver counts a length error.
            *self.len = 0;
            return self.refuse(&format_args!(
                "{writable}-byte RX buffer for a {len}-byte frame"
            ));
        }
        let frame_len = (len - VNET_HDR_LEN) as u64;
        if !self.limiter.consume(1, TokenType::Ops) {
            self.metrics.rx_rate_limiter_throttled.inc();
            self.wait = Some(Wait::Limiter);
            return ChainOutcome::Throttled;
        }
        if !self.limiter.consume(frame_len, TokenType::Bytes) {
            self.limiter.manual_replenish(1, TokenType::Ops);
            self.metrics.rx_rate_limiter_throttled.inc();
            self.wait = Some(Wait::Limiter);
            return ChainOutcome::Throttled;
        }
        self.frame[NUM_BUFFERS..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
        *self.len = 0;
        if let Err(e) = buffers::write_stream(self.mem, self.segments, 0, &self.frame[..len]) {
            return self.refuse(&e);
        }
        self.metrics.rx_packets_count.inc();
        self.metrics.rx_bytes_count.add(frame_len);
        ChainOutcome::Used(len as u32)
    }

    fn refuse(&self, why: &dyn std::fmt::Display) -> ChainOutcome {
        self.metrics.rx_fails.inc();
        if let Some(n) = self.logs.bad_chain.hit() {
            log::warn!(
                "Interface {}: RX chain refused: {why} ({n} so far)",
                self.iface
            );
        }
        ChainOutcome::Used(0)
    }
}

impl Net {
    /// Moves frames from the tap to the guest: at most one queue's worth, then yields.
    pub fn process_rx(&mut self) {
        if self.core.interrupt.needs_reset() || self.rx_limiter.is_blocked() {
            return;
        }
        let Some(active) = self.core.active.as_mut() else {
            return;
        };
        let mut worker = RxWorker {
            iface: &self.id,
            mem: &active.mem,
            tap: &mut self.tap,
            limiter: &mut self.rx_limiter,
            firewall: self.firewall.as_mut(),
            segments: &mut self.segments,
            frame: &mut self.rx_frame,
            len: &mut self.rx_len,
            metrics: &self.metrics,
            logs: &self.logs,
            wait: None,
            now: Instant::now(),
        };
        let rx = &mut active.queues[RX];
        let (end, used_any) = drain(rx, &active.mem, |q, head| {
            let outcome = worker.handle(q, head);
            charge_descriptors(outcome, worker.segments.len())
        });
        let wait = worker.wait;
        if used_any && needs_interrupt(rx, &active.mem) {
            self.core.signal_used(&self.metrics.event_fails);
        }
        match end {
            // The ring is empty: a waiting frame waits for the driver's next buffers.
            DrainEnd::Empty => {
                if self.rx_len > 0 {
                    self.metrics.no_rx_avail_buffer.inc();
                }
            }
            DrainEnd::Throttled if wait == Some(Wait::Yield) => {
                self.core.kick(RX, &self.metrics.event_fails);
            }
            DrainEnd::Throttled => {}
            DrainEnd::Budget => self.core.kick(RX, &self.metrics.event_fails),
            DrainEnd::Broken(e) => self.enter_needs_reset(&e),
        }
    }
}
