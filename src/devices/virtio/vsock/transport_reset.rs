//! The transport reset event (virtio 1.2 5.10.6.6): a restored snapshot has none of the host
//! sockets the guest's connections were tied to, so the device tells the driver with one
//! `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (a le32 id 0) in a buffer of the event queue; the
//! driver then drops its connections and reads the CID again (Firecracker does the same).
//!
//! The event is sent once, into the first good buffer the driver has posted, or posts later.
//! A buffer that is device-readable, shorter than 4 bytes or outside guest memory is used
//! with length 0 and counted; the event waits for the next one.
//!
//! Host packets wait from the restore until the driver has handled the event: a driver
//! resets every connected socket when it handles it, so a host client that connected in
//! between (a client that talks to the guest right after `PUT /snapshot/load` returns)
//! would have its new connection torn down by the reset of the old ones. A Linux driver posts the event's
//! buffer again once it has handled it: the device asks to be notified of that post (the
//! event queue's `avail_event`) and holds RX until the event queue's avail index moves, or
//! [`RESET_HOLD`] passed (since the restore while no buffer came to send the event in,
//! then since the event was sent; a driver that never posts delays host packets, nothing
//! more).

use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::{Vsock, EVQ};
use crate::devices::virtio::buffers::{self, Layout};
use crate::devices::virtio::chain;
use crate::devices::virtio::queue::{drain, ChainOutcome};

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
pub const TRANSPORT_RESET: u32 = 0;
/// The event's size: its id as a le32.
const EVENT_LEN: u32 = 4;
/// How long host packets wait at most for the driver to handle a transport reset: well
/// below the guest's time to answer a host connect (`muxer::CONNECT_TIMEOUT`).
pub const RESET_HOLD: Duration = Duration::from_secs(1);

/// A transport reset the driver has not handled yet (sent, or still waiting for a buffer).
#[derive(Debug)]
pub struct ResetInFlight {
    /// The event queue's avail index when the event was sent; None before it was sent.
    pub(super) avail: Option<Wrapping<u16>>,
    /// When host packets flow again even without a sign from the driver.
    pub(super) until: Instant,
}

/// Asks the driver to notify the device of its next event buffer (`avail_event` = `avail`,
/// with EVENT_IDX; without it the driver notifies every post anyway). The address is the
/// validated used ring's, each step checked.
fn notify_on_next_post<M: GuestMemory>(q: &Queue, mem: &M, avail: Wrapping<u16>) {
    if !q.event_idx_enabled() {
        return;
    }
    let offset = 4 + 8 * u64::from(q.size());
    if let Some(addr) = GuestAddress(q.used_ring()).0.checked_add(offset) {
        // A bad address only loses the early notification: the hold ends at its deadline.
        let _ = mem.write_obj(avail.0.to_le(), GuestAddress(addr));
    }
}

impl Vsock {
    /// After a snapshot restore: every connection ends (their host sockets are not in the
    /// snapshot) and, when the driver is live, it gets a transport reset event.
    pub fn restored(&mut self) {
        self.muxer.end_all();
        if self.core.active.is_some() {
            self.reset_pending = true;
            // Host packets wait from now on: a host client may connect before the event
            // loop comes by to send the event.
            self.reset_in_flight = Some(ResetInFlight {
                avail: None,
                until: Instant::now() + RESET_HOLD,
            });
            // The event loop sends it when it comes by (if a buffer waits already).
            self.core.kick(EVQ);
        }
    }

    /// Whether a transport reset event still waits for an event buffer.
    pub fn transport_reset_pending(&self) -> bool {
        self.reset_pending
    }

    /// Sends a pending transport reset event into the first good event buffer.
    pub fn process_evq(&mut self) {
        if !self.reset_pending || self.core.interrupt.needs_reset() {
            return;
        }
        let Some(active) = self.core.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let segments = &mut self.segments;
        let metrics = &self.metrics;
        let pending = &mut self.reset_pending;
        let was_pending = *pending;
        let (end, used_any) = drain(&mut active.queues[EVQ], mem, |q, head| {
            if !*pending {
                // Sent: the driver's other buffers wait for a later event.
                return ChainOutcome::Throttled;
            }
            let desc_table = GuestAddress(q.desc_table());
            if let Err(e) = chain::read_chain(mem, desc_table, q.size(), head, segments) {
                return ChainOutcome::Broken(e.into());
            }
            let good = matches!(
                Layout::check(mem, segments),
                Ok(l) if l.readable == 0 && l.writable >= EVENT_LEN
            );
            if good
                && buffers::write_stream(mem, segments, 0, &TRANSPORT_RESET.to_le_bytes()).is_ok()
            {
                *pending = false;
                metrics.transport_resets_sent.inc();
                ChainOutcome::Used(EVENT_LEN)
            } else {
                metrics.bad_event_chain.inc();
                ChainOutcome::Used(0)
            }
        });
        if was_pending && !self.reset_pending {
            // Read before the interrupt: the driver cannot have posted again yet.
            let q = &active.queues[EVQ];
            let avail = q.avail_idx(mem, Ordering::Acquire).unwrap_or_default();
            notify_on_next_post(q, mem, avail);
            // The driver gets its own RESET_HOLD to handle it.
            self.reset_in_flight = Some(ResetInFlight {
                avail: Some(avail),
                until: Instant::now() + RESET_HOLD,
            });
        }
        self.core.finish_drain(EVQ, end, used_any);
    }

    /// Whether host packets still wait for the driver to handle a transport reset; ends the
    /// wait once the driver posted an event buffer again, or at the deadline.
    pub fn waiting_for_reset(&mut self) -> bool {
        let Some(flight) = &self.reset_in_flight else {
            return false;
        };
        let handled = match flight.avail {
            // Not sent yet (no event buffer so far).
            Some(sent_at) => self.core.active.as_ref().is_none_or(|active| {
                // An unreadable ring ends the wait too: the device cannot learn more.
                active.queues[EVQ]
                    .avail_idx(&active.mem, Ordering::Acquire)
                    .ok()
                    != Some(sent_at)
            }),
            None => self.core.active.is_none(),
        };
        if !handled && Instant::now() < flight.until {
            return true;
        }
        if !handled {
            log::warn!(
                "vsock: the driver did not handle the transport reset within {RESET_HOLD:?}; \
                 host packets flow again"
            );
        }
        self.reset_in_flight = None;
        false
    }
}
