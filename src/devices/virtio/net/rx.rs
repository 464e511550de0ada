//! Receive: frames are read from the tap (with their virtio-net header) into the device's
//! buffer, judged by the firewall (`ingress`), charged to the RX limiter and copied whole into
//! one chain of the RX queue (with mergeable buffers, into as many as the frame needs:
//! [`super::rx_mergeable`]). A frame waits in the device while the guest has no buffer or the
//! limiter is blocked; the tap is read only when that frame has gone. A dropped frame never
//! touches guest memory.
//!
//! The tap is watched edge-triggered: the device reads it until it is empty, or stops with a
//! reason that brings it back (a frame waiting for a buffer: the RX queue notification; the
//! limiter: its timer; the budget: a self-notification).

use palisade_firewall::Verdict;
use std::io;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::tap::VNET_HDR_LEN;
use super::tx::HEADER_PREFIX;
use super::worker::Worker;
use super::{count_drop, Net, RX};
use crate::devices::virtio::buffers::{self, Layout};
use crate::devices::virtio::chain;
use crate::devices::virtio::queue::{ChainOutcome, DrainEnd};
use crate::rate_limiter::TokenType;

/// Frames the firewall may drop while one chain waits, before the device yields.
const DROPS_PER_CHAIN: usize = 256;
/// Offset of `num_buffers` in the virtio 1.x header.
pub(super) const NUM_BUFFERS: usize = 10;

/// Why a chain was left in the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// The tap is empty: its next edge brings the device back.
    Tap,
    /// The limiter's timer brings it back.
    Limiter,
    /// Too many drops in a row: come back after the other events.
    Yield,
}

/// Taking frames from the tap (or the MMDS responder) through the firewall, for either way
/// of filling the guest's buffers.
impl<S> Worker<'_, S> {
    /// Makes sure a frame the firewall passed waits in `frame`; the reason to wait when none
    /// can be had now.
    pub(super) fn fill(&mut self) -> Result<(), Wait> {
        for _ in 0..DROPS_PER_CHAIN {
            if self.frame.len > 0 || self.take_mmds_frame() {
                return Ok(());
            }
            let n = match self.tap.read_frame(&mut self.frame.buf) {
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
                    return Err(Wait::Tap);
                }
            };
            if n <= VNET_HDR_LEN {
                self.metrics.rx_fails.inc();
                continue;
            }
            let eth = &self.frame.buf[VNET_HDR_LEN..n];
            let verdict = match self.firewall.as_deref_mut() {
                None => Verdict::Pass,
                Some(fw) if self.frame.buf[1] != 0 => {
                    fw.ingress_headers(&eth[..eth.len().min(HEADER_PREFIX)], eth.len(), self.now)
                }
                Some(fw) => fw.ingress(eth, self.now),
            };
            match verdict {
                Verdict::Pass => self.frame.len = n,
                Verdict::Drop(reason) => count_drop(self.metrics, reason, false),
            }
        }
        if self.frame.len > 0 {
            return Ok(());
        }
        Err(Wait::Yield)
    }

    /// Puts the MMDS responder's next frame in `frame` with a zeroed virtio-net header (its
    /// checksums are complete); it bypasses the firewall: the VMM made it. Once its queue is
    /// empty the stack is polled, so it emits what the full queue held back.
    fn take_mmds_frame(&mut self) -> bool {
        let Some(stack) = self.mmds.as_deref_mut() else {
            return false;
        };
        let Some(frame) = stack.pop_guest_frame() else {
            return false;
        };
        if stack.pending_guest_frames() == 0 {
            stack.poll(self.now);
        }
        let len = VNET_HDR_LEN + frame.len();
        let Some(buf) = self.frame.buf.get_mut(..len) else {
            self.metrics.rx_fails.inc();
            return false;
        };
        buf[..VNET_HDR_LEN].fill(0);
        buf[VNET_HDR_LEN..].copy_from_slice(&frame);
        self.frame.len = len;
        self.metrics.mmds_frames_out.inc();
        true
    }
}

/// RX's chain handler without mergeable buffers (one frame, one chain); its state says why a
/// chain was left in the ring.
impl Worker<'_, Option<Wait>> {
    fn handle(&mut self, queue: &Queue, head: u16) -> ChainOutcome {
        if let Err(wait) = self.fill() {
            self.state = Some(wait);
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
        let len = self.frame.len;
        if writable < len {
            // Not a buffer this frame fits in (no mergeable buffers): the frame is lost, the
            // chain goes back empty and the driver counts a length error.
            self.frame.len = 0;
            return self.refuse(&format_args!(
                "{writable}-byte RX buffer for a {len}-byte frame"
            ));
        }
        let frame_len = (len - VNET_HDR_LEN) as u64;
        if !self.limiter.consume(1, TokenType::Ops) {
            self.metrics.rx_rate_limiter_throttled.inc();
            self.state = Some(Wait::Limiter);
            return ChainOutcome::Throttled;
        }
        if !self.limiter.consume(frame_len, TokenType::Bytes) {
            self.limiter.manual_replenish(1, TokenType::Ops);
            self.metrics.rx_rate_limiter_throttled.inc();
            self.state = Some(Wait::Limiter);
            return ChainOutcome::Throttled;
        }
        self.frame.buf[NUM_BUFFERS..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
        self.frame.len = 0;
        if let Err(e) = buffers::write_stream(self.mem, self.segments, 0, &self.frame.buf[..len]) {
            return self.refuse(&e);
        }
        self.metrics.rx_packets_count.inc();
        self.metrics.rx_bytes_count.add(frame_len);
        ChainOutcome::Used(len as u32)
    }

    fn refuse(&self, why: &dyn std::fmt::Display) -> ChainOutcome {
        self.refuse_chain(&self.metrics.rx_fails, "RX chain refused", why)
    }
}

impl Net {
    /// Moves frames from the tap to the guest: at most one queue's worth, then yields.
    pub fn process_rx(&mut self) {
        if self.mergeable() {
            return self.process_rx_mergeable();
        }
        let Some((end, wait)) = self.drain_queue(RX, None, |w, q, head| w.handle(q, head)) else {
            return;
        };
        match end {
            // The ring is empty: a waiting frame waits for the driver's next buffers.
            DrainEnd::Empty if self.rx_frame.len > 0 => self.metrics.no_rx_avail_buffer.inc(),
            DrainEnd::Throttled if wait == Some(Wait::Yield) => self.core.kick(RX),
            _ => {}
        }
    }
}
