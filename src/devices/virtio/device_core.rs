//! The part every virtio device shares: its offered features, its queue notification events,
//! its interrupt, and the guest memory and queues it holds between activation and reset.
//!
//! A device embeds one [`DeviceCore`] and delegates the plumbing of [`super::VirtioDevice`] to
//! it (accessors, [`DeviceCore::activate`], [`DeviceCore::reset`]), and the event-loop chores
//! (reading a queue event, a rate limiter's timer) to [`DeviceCore::read_queue_event`] and
//! [`limiter_timer_event`], so a new device writes only its own logic.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::Interrupt;
use super::queue::MAX_QUEUE_SIZE;
use super::{ActivateContext, ActivateError, VIRTIO_RING_F_EVENT_IDX};
use crate::metrics::Counter;
use crate::rate_limiter::RateLimiter;
use crate::vstate::memory::GuestMemory;

/// What a device holds between activation and reset.
pub struct Active<const N: usize> {
    /// Guest memory, for the queues and the buffers they point to.
    pub mem: GuestMemory,
    /// The features the driver accepted.
    pub features: u64,
    /// The queues, in the device's order.
    pub queues: [Queue; N],
}

/// The shared state of a device with `N` queues of [`MAX_QUEUE_SIZE`] entries.
pub struct DeviceCore<const N: usize> {
    /// Features offered to the driver.
    pub avail_features: u64,
    /// One eventfd per queue, written by KVM when the driver notifies the queue.
    pub queue_events: [EventFd; N],
    /// The interrupt line and status bits, shared with the transport.
    pub interrupt: Arc<Interrupt>,
    /// Present between activation and reset.
    pub active: Option<Active<N>>,
    queue_sizes: [u16; N],
}

impl<const N: usize> DeviceCore<N> {
    /// An inactive core offering `avail_features`, with fresh events and interrupt.
    pub fn new(avail_features: u64) -> std::io::Result<Self> {
        let mut events = Vec::with_capacity(N);
        for _ in 0..N {
            events.push(EventFd::new(EFD_NONBLOCK)?);
        }
        let queue_events = <[EventFd; N]>::try_from(events).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "queue event count")
        })?;
        Ok(Self {
            avail_features,
            queue_events,
            interrupt: Arc::new(Interrupt::new()?),
            active: None,
            queue_sizes: [MAX_QUEUE_SIZE; N],
        })
    }

    /// The largest size of each queue.
    pub fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    /// Takes the queues: refused (and `fails` counted) when active already or when the driver
    /// set up another number of queues. Event suppression follows the accepted features.
    pub fn activate(&mut self, ctx: ActivateContext, fails: &Counter) -> Result<(), ActivateError> {
        if self.active.is_some() {
            fails.inc();
            return Err(ActivateError::AlreadyActive);
        }
        let got = ctx.queues.len();
        let Ok(mut queues) = <[Queue; N]>::try_from(ctx.queues) else {
            fails.inc();
            return Err(ActivateError::QueueCount { expected: N, got });
        };
        let event_idx = ctx.features & self.avail_features & VIRTIO_RING_F_EVENT_IDX != 0;
        for queue in &mut queues {
            queue.set_event_idx(event_idx);
        }
        self.active = Some(Active {
            mem: ctx.mem,
            features: ctx.features,
            queues,
        });
        Ok(())
    }

    /// Stops serving and gives the queues back (empty when it was not active).
    pub fn reset(&mut self) -> Vec<Queue> {
        self.active
            .take()
            .map(|a| Vec::from(a.queues))
            .unwrap_or_default()
    }

    /// Consumes queue `index`'s notification; counts a failure in `fails`.
    pub fn read_queue_event(&self, index: usize, fails: &Counter) {
        if self
            .queue_events
            .get(index)
            .is_none_or(|e| e.read().is_err())
        {
            fails.inc();
        }
    }

    /// Notifies queue `index` from the device itself (to come back to it after the other
    /// events); counts a failure in `fails`.
    pub fn kick(&self, index: usize, fails: &Counter) {
        if self
            .queue_events
            .get(index)
            .is_none_or(|e| e.write(1).is_err())
        {
            fails.inc();
        }
    }

    /// Raises the used-buffer interrupt; counts a failure in `fails`.
    pub fn signal_used(&self, fails: &Counter) {
        if self.interrupt.signal_used_queue().is_err() {
            fails.inc();
        }
    }
}

/// A rate limiter's timer fired: counts the event in `events`, rearms the limiter, and counts
/// (and logs, as `who`) a failure in `fails`. The caller then serves the queue it unblocks.
pub fn limiter_timer_event(
    limiter: &mut RateLimiter,
    events: &Counter,
    fails: &Counter,
    who: &dyn std::fmt::Display,
) {
    events.inc();
    if let Err(e) = limiter.on_timer() {
        fails.inc();
        log::error!("{who}: {e}");
    }
}
