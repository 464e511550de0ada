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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::virtio::VIRTIO_F_VERSION_1;

    fn ctx(queues: usize, features: u64) -> ActivateContext {
        ActivateContext {
            mem: GuestMemory::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap(),
            queues: (0..queues).map(|_| Queue::new(16).unwrap()).collect(),
            features,
        }
    }

    #[test]
    fn activation_refuses_a_second_activation_and_a_wrong_queue_count() {
        let mut core = DeviceCore::<2>::new(VIRTIO_F_VERSION_1).unwrap();
        let fails = Counter::new();
        assert!(matches!(
            core.activate(ctx(1, VIRTIO_F_VERSION_1), &fails),
            Err(ActivateError::QueueCount {
                expected: 2,
                got: 1
            })
        ));
        assert!(core.active.is_none());
        core.activate(ctx(2, VIRTIO_F_VERSION_1), &fails).unwrap();
        assert!(matches!(
            core.activate(ctx(2, VIRTIO_F_VERSION_1), &fails),
            Err(ActivateError::AlreadyActive)
        ));
        assert_eq!(fails.count(), 2);
        assert_eq!(core.reset().len(), 2);
        assert!(core.reset().is_empty());
        assert_eq!(core.queue_max_sizes(), &[MAX_QUEUE_SIZE; 2]);
    }

    #[test]
    fn event_suppression_follows_the_features_both_sides_agreed_on() {
        let both = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
        let fails = Counter::new();
        let mut offered = DeviceCore::<1>::new(both).unwrap();
        offered.activate(ctx(1, both), &fails).unwrap();
        assert!(offered.active.as_ref().unwrap().queues[0].event_idx_enabled());
        let mut plain = DeviceCore::<1>::new(VIRTIO_F_VERSION_1).unwrap();
        plain.activate(ctx(1, both), &fails).unwrap();
        assert!(!plain.active.as_ref().unwrap().queues[0].event_idx_enabled());
        let mut declined = DeviceCore::<1>::new(both).unwrap();
        declined
            .activate(ctx(1, VIRTIO_F_VERSION_1), &fails)
            .unwrap();
        assert!(!declined.active.as_ref().unwrap().queues[0].event_idx_enabled());
        assert_eq!(fails.count(), 0);
    }

    #[test]
    fn queue_events_are_consumed_and_kicked_per_queue() {
        let core = DeviceCore::<2>::new(VIRTIO_F_VERSION_1).unwrap();
        let fails = Counter::new();
        core.kick(1, &fails);
        assert_eq!(core.queue_events[1].read().unwrap(), 1);
        core.kick(0, &fails);
        core.read_queue_event(0, &fails);
        assert_eq!(fails.count(), 0);
        // Nothing pending (non-blocking read fails) and an index past the queues both count.
        core.read_queue_event(0, &fails);
        core.read_queue_event(2, &fails);
        core.kick(2, &fails);
        assert_eq!(fails.count(), 3);
    }
}
