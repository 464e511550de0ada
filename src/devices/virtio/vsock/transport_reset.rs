//! The transport reset event (virtio 1.2 5.10.6.6): a restored snapshot has none of the host
//! sockets the guest's connections were tied to, so the device tells the driver with one
//! `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (a le32 id 0) in a buffer of the event queue; the
//! driver then drops its connections and reads the CID again (Firecracker does the same).
//!
//! The event is sent once, into the first good buffer the driver has posted, or posts later.
//! A buffer that is device-readable, shorter than 4 bytes or outside guest memory is used
//! with length 0 and counted; the event waits for the next one.

use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use super::{Vsock, EVQ};
use crate::devices::virtio::buffers::{self, Layout};
use crate::devices::virtio::chain;
use crate::devices::virtio::queue::{drain, ChainOutcome};

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
pub const TRANSPORT_RESET: u32 = 0;
/// The event's size: its id as a le32.
const EVENT_LEN: u32 = 4;

impl Vsock {
    /// After a snapshot restore: every connection ends (their host sockets are not in the
    /// snapshot) and, when the driver is live, it gets a transport reset event.
    pub fn restored(&mut self) {
        self.muxer.end_all();
        if self.core.active.is_some() {
            self.reset_pending = true;
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
        self.core.finish_drain(EVQ, end, used_any);
    }
}
