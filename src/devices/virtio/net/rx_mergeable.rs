//! Receive with mergeable buffers (VIRTIO_NET_F_MRG_RXBUF, virtio 1.x 5.1.6.4): a frame
//! spreads over as many chains of the RX queue as it needs, in ring order, and the header's
//! `num_buffers` says how many. The frame comes from the tap and the firewall as in [`super::rx`]
//! (it waits in the device until it has gone).
//!
//! The used ring never holds part of a frame: the chains are filled first, their used
//! elements written beyond the used index, and the index moved over all of them with one
//! store. When the guest has posted too few buffers the chains go back to the ring untouched
//! and the frame waits for the next RX notification; when even the whole ring (or one drain's
//! budget of descriptor walking) cannot hold it, the frame is dropped, counted in `rx_fails`,
//! and its chains are returned unused (length 0). A chain the guest got wrong (a
//! device-readable buffer, a zero-length buffer, less room than the header: every buffer must
//! hold one, virtio 1.x 5.1.6.3.1) is refused on its own with length 0 and counted; the frame
//! goes on in the next chains.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::rx::{Wait, NUM_BUFFERS};
use super::tap::VNET_HDR_LEN;
use super::worker::Worker;
use super::{Net, RX};
use crate::devices::virtio::buffers::{self, Layout};
use crate::devices::virtio::chain::{self, Segment};
use crate::devices::virtio::queue::{needs_interrupt, DrainEnd, QueueError, BYTE_BUDGET};
use crate::devices::virtio::queue::{DESCRIPTOR_COST, MAX_QUEUE_SIZE};
use crate::rate_limiter::TokenType;
use crate::vstate::memory::GuestMemory;

/// Bytes of a used ring's header (flags, idx) and of one of its elements.
const USED_HEADER: u64 = 4;
const USED_ELEMENT: u64 = 8;

/// The chains of one frame as they are gathered.
#[derive(Default)]
pub struct Gathered {
    /// Head and used length of each chain, in ring order.
    chains: Vec<(u16, u32)>,
    /// The first chain's buffers (where the header and `num_buffers` go).
    first: Vec<Segment>,
}

impl Gathered {
    /// Room for a queue's worth of chains, allocated once.
    pub fn new() -> Self {
        Self {
            chains: Vec::with_capacity(usize::from(MAX_QUEUE_SIZE)),
            first: Vec::with_capacity(usize::from(MAX_QUEUE_SIZE)),
        }
    }
}

/// How gathering the chains for the waiting frame ended.
enum Gather {
    /// The frame is in its chains, ready to publish; the walk cost this many budget bytes.
    Ready(u64),
    /// The ring ran out first: the chains are back in it; the frame waits. The walk (and the
    /// copying into the chains held) cost this many budget bytes all the same.
    Short(u64),
    /// The ring (or a drain's budget) cannot hold the frame: drop it, return the chains.
    Never,
}

/// What the RX drain keeps: why it stopped, and whether the driver wants an interrupt.
pub struct MergeState {
    /// Why a frame was left waiting ([`super::rx`]'s reasons).
    pub wait: Option<Wait>,
    /// The driver asked for an interrupt for what was used.
    pub interrupt: bool,
}

impl Worker<'_, MergeState> {
    /// Delivers frames over as many chains as each needs, at most a drain's budget.
    fn drain_mergeable(&mut self, queue: &mut Queue, gathered: &mut Gathered) -> (DrainEnd, bool) {
        let mem = self.mem;
        let old_used = queue.next_used();
        let mut used_any = false;
        let mut looks = 0u16;
        let mut moved = 0u64;
        let end = loop {
            if looks >= queue.size() || moved >= BYTE_BUDGET {
                break DrainEnd::Budget;
            }
            looks += 1;
            if let Err(wait) = self.fill() {
                self.state.wait = Some(wait);
                break DrainEnd::Throttled;
            }
            let frame_len = (self.frame.len - VNET_HDR_LEN) as u64;
            if !self.limiter.consume(1, TokenType::Ops) {
                self.metrics.rx_rate_limiter_throttled.inc();
                self.state.wait = Some(Wait::Limiter);
                break DrainEnd::Throttled;
            }
            if !self.limiter.consume(frame_len, TokenType::Bytes) {
                self.limiter.manual_replenish(1, TokenType::Ops);
                self.metrics.rx_rate_limiter_throttled.inc();
                self.state.wait = Some(Wait::Limiter);
                break DrainEnd::Throttled;
            }
            let outcome = self.gather(queue, gathered, &mut used_any);
            let refund = |w: &mut Self| {
                w.limiter.manual_replenish(1, TokenType::Ops);
                w.limiter.manual_replenish(frame_len, TokenType::Bytes);
            };
            match outcome {
                Ok(Gather::Ready(cost)) => {
                    if let Err(e) = publish(queue, mem, &gathered.chains) {
                        break DrainEnd::Broken(QueueError::Used(e));
                    }
                    used_any = true;
                    moved = moved.saturating_add(cost);
                    self.frame.len = 0;
                    self.metrics.rx_packets_count.inc();
                    self.metrics.rx_bytes_count.add(frame_len);
                }
                Ok(Gather::Short(cost)) => {
                    refund(self);
                    // A driver that posts one buffer at a time makes each retry copy the
                    // frame again: every walk counts against the drain's budget.
                    moved = moved.saturating_add(cost);
                    match enable_notification_past(queue, mem) {
                        Ok(true) => continue,
                        Ok(false) => break DrainEnd::Empty,
                        Err(e) => break DrainEnd::Broken(QueueError::Used(e)),
                    }
                }
                Ok(Gather::Never) => {
                    refund(self);
                    let len = self.frame.len;
                    self.frame.len = 0;
                    let _ = self.refuse_chain(
                        &self.metrics.rx_fails,
                        "RX frame dropped",
                        &format_args!("the RX ring cannot hold a {len}-byte frame"),
                    );
                    if let Err(e) = return_unused(queue, mem, &gathered.chains) {
                        break DrainEnd::Broken(QueueError::Used(e));
                    }
                    used_any |= !gathered.chains.is_empty();
                    moved = moved.saturating_add(BYTE_BUDGET);
                }
                Err(e) => break DrainEnd::Broken(e),
            }
        };
        self.finish(queue, end, old_used, used_any)
    }

    /// Decides on the interrupt (the used elements moved in one store each frame, so
    /// the queue's own count of added elements is not the driver's window), returns what the
    /// core needs: the end, and no used chains (the interrupt is decided here).
    fn finish(
        &mut self,
        queue: &mut Queue,
        end: DrainEnd,
        old_used: u16,
        used_any: bool,
    ) -> (DrainEnd, bool) {
        self.state.interrupt = used_any && wants_interrupt(queue, self.mem, old_used);
        (end, false)
    }

    /// Pops chains until they hold the waiting frame, writing it into them as they come; the
    /// first gets the header with `num_buffers`. Chains the guest got wrong are refused
    /// (used with length 0) at once.
    fn gather(
        &mut self,
        queue: &mut Queue,
        gathered: &mut Gathered,
        used_any: &mut bool,
    ) -> Result<Gather, QueueError> {
        let mem = self.mem;
        let size = queue.size();
        let mut start = queue.next_avail();
        let need = self.frame.len;
        let mut done = 0usize;
        let mut cost = 0u64;
        let mut popped = 0u16;
        gathered.chains.clear();
        while done < need {
            if popped >= size || cost > BYTE_BUDGET {
                return Ok(Gather::Never);
            }
            popped += 1;
            let Some(head) = pop_head(queue, mem)? else {
                queue.set_next_avail(start);
                // Refused chains were used; the held ones go back.
                return Ok(Gather::Short(cost));
            };
            let desc_table = GuestAddress(queue.desc_table());
            chain::read_chain(mem, desc_table, size, head, self.segments)?;
            cost = cost.saturating_add(self.segments.len() as u64 * DESCRIPTOR_COST);
            let room = match Layout::check(mem, self.segments) {
                Ok(l) if l.readable == 0 && l.writable as usize >= VNET_HDR_LEN => l.writable,
                Ok(l) => {
                    let why =
                        format_args!("{} readable, {} writable bytes", l.readable, l.writable);
                    self.refuse_in_gather(queue, head, gathered, &why)?;
                    0
                }
                Err(e) => {
                    self.refuse_in_gather(queue, head, gathered, &e)?;
                    0
                }
            };
            if room == 0 {
                // Nothing before this chain can be taken back any more: start after it.
                *used_any = true;
                start = queue.next_avail();
                done = 0;
                continue;
            }
            let take = (room as usize).min(need - done);
            let bytes = &self.frame.buf[done..done + take];
            if let Err(e) = buffers::write_stream(mem, self.segments, 0, bytes) {
                // Layout::check saw the buffers inside guest memory: not expected.
                self.refuse_in_gather(queue, head, gathered, &e)?;
                *used_any = true;
                start = queue.next_avail();
                done = 0;
                continue;
            }
            if gathered.chains.is_empty() {
                gathered.first.clear();
                gathered.first.extend_from_slice(self.segments);
            }
            gathered.chains.push((head, take as u32));
            done += take;
            cost = cost.saturating_add(take as u64);
        }
        let count = gathered.chains.len() as u16;
        let at = NUM_BUFFERS as u64;
        buffers::write_stream(mem, &gathered.first, at, &count.to_le_bytes())
            .map_err(|e| QueueError::Used(virtio_queue::Error::GuestMemory(e)))?;
        Ok(Gather::Ready(cost))
    }

    /// Refuses chain `head` (used with length 0, counted) and returns the chains held for the
    /// frame unused: the frame waits for the chains after it.
    fn refuse_in_gather(
        &self,
        queue: &mut Queue,
        head: u16,
        gathered: &mut Gathered,
        why: &dyn std::fmt::Display,
    ) -> Result<(), QueueError> {
        let _ = self.refuse_chain(&self.metrics.rx_fails, "RX chain refused", why);
        return_unused(queue, self.mem, &gathered.chains).map_err(QueueError::Used)?;
        gathered.chains.clear();
        queue.add_used(self.mem, head, 0).map_err(QueueError::Used)
    }
}

/// The next available head, checked against the queue size.
fn pop_head(queue: &mut Queue, mem: &GuestMemory) -> Result<Option<u16>, QueueError> {
    let size = queue.size();
    let mut iter = queue.iter(mem).map_err(QueueError::AvailIndex)?;
    let Some(chain) = iter.next() else {
        return Ok(None);
    };
    let index = chain.head_index();
    if index >= size {
        return Err(QueueError::HeadOutOfRange { index, size });
    }
    Ok(Some(index))
}

/// Adds `chains` to the used ring as one step: every element but the last is written beyond
/// the used index, then the last is added, which moves the index over all of them.
fn publish(
    queue: &mut Queue,
    mem: &GuestMemory,
    chains: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    let Some((&(last_head, last_len), rest)) = chains.split_last() else {
        return Ok(());
    };
    let size = queue.size();
    let first = queue.next_used();
    let ring = GuestAddress(queue.used_ring());
    for (i, &(head, len)) in rest.iter().enumerate() {
        let slot = first.wrapping_add(i as u16) % size;
        let addr = ring
            .checked_add(USED_HEADER + USED_ELEMENT * u64::from(slot))
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        let mut element = [0u8; USED_ELEMENT as usize];
        element[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        element[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&element, addr)
            .map_err(virtio_queue::Error::GuestMemory)?;
    }
    queue.set_next_used(first.wrapping_add(rest.len() as u16));
    queue.add_used(mem, last_head, last_len)
}

/// Gives `chains` back to the driver unused (length 0).
fn return_unused(
    queue: &mut Queue,
    mem: &GuestMemory,
    chains: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    chains
        .iter()
        .try_for_each(|&(head, _)| queue.add_used(mem, head, 0))
}

/// Enables notifications for buffers past those the ring holds now (the held chains went
/// back: the driver must notify for its next ones, not for those); true when more came in
/// meanwhile.
fn enable_notification_past(
    queue: &mut Queue,
    mem: &GuestMemory,
) -> Result<bool, virtio_queue::Error> {
    let resume = queue.next_avail();
    let seen = queue.avail_idx(mem, Ordering::Acquire)?;
    queue.set_next_avail(seen.0);
    let more = queue.enable_notification(mem);
    queue.set_next_avail(resume);
    more
}

/// True when the driver wants an interrupt for the used elements from `old_used` on
/// (EVENT_IDX: `used_event` within them; otherwise the avail ring's flag).
fn wants_interrupt(queue: &mut Queue, mem: &GuestMemory, old_used: u16) -> bool {
    if !queue.event_idx_enabled() {
        return needs_interrupt(queue, mem);
    }
    fence(Ordering::SeqCst);
    let at = 4 + 2 * u64::from(queue.size());
    let Some(used_event) = GuestAddress(queue.avail_ring())
        .checked_add(at)
        .and_then(|a| mem.read_obj::<u16>(a).ok())
    else {
        // An unreadable used_event is the driver's problem: interrupt rather than stall it.
        return true;
    };
    let new = Wrapping(queue.next_used());
    let event = Wrapping(u16::from_le(used_event));
    (new - event - Wrapping(1)) < (new - Wrapping(old_used))
}

impl Net {
    /// RX with mergeable buffers: at most a drain's budget of frames, then yields.
    pub(super) fn process_rx_mergeable(&mut self) {
        let mut gathered = std::mem::take(&mut self.rx_gathered);
        let state = MergeState {
            wait: None,
            interrupt: false,
        };
        let result = self.with_worker(RX, state, |w, queue| {
            w.drain_mergeable(queue, &mut gathered)
        });
        self.rx_gathered = gathered;
        let Some((end, state)) = result else {
            return;
        };
        if state.interrupt {
            self.core.signal_used();
        }
        match end {
            DrainEnd::Empty if self.rx_frame.len > 0 => self.metrics.no_rx_avail_buffer.inc(),
            DrainEnd::Throttled if state.wait == Some(Wait::Yield) => self.core.kick(RX),
            _ => {}
        }
    }
}
