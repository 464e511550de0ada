//! The part every virtio device shares: its offered features, its queue notification events,
//! its interrupt, and the guest memory and queues it holds between activation and reset.
//!
//! A device embeds one [`DeviceCore`] and implements [`CoreDevice`] (its id, name, config
//! space and the hooks it needs); [`VirtioDevice`] follows from that (accessors, activation
//! checks, reset). The event-loop chores (reading or kicking a queue event, the used-buffer
//! interrupt, needs-reset, a rate limiter's timer) are helpers here too, so a new device
//! writes only its own logic.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::Interrupt;
use super::queue::MAX_QUEUE_SIZE;
use super::{ActivateContext, ActivateError, VirtioDevice, VIRTIO_RING_F_EVENT_IDX};
use crate::logger::RateLimitedLog;
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

    /// The guest broke a queue: the device stops serving until the driver resets it. Counts
    /// it in `count` and logs it (as `who`, rate limited by `log`).
    pub fn enter_needs_reset(
        &self,
        count: &Counter,
        log: &RateLimitedLog,
        who: &dyn std::fmt::Display,
        why: &dyn std::fmt::Display,
    ) {
        count.inc();
        if let Some(n) = log.hit() {
            let queue = if N == 1 { "its queue" } else { "a queue" };
            log::warn!("{who}: the guest broke {queue} ({why}); device needs a reset ({n} so far)");
        }
        self.interrupt.set_needs_reset();
    }
}

/// The [`VirtioDevice`] plumbing of a [`DeviceCore`], whatever its number of queues.
pub trait SharedCore: Send {
    /// Features offered to the driver.
    fn avail_features(&self) -> u64;
    /// The largest size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// One eventfd per queue.
    fn queue_events(&self) -> &[EventFd];
    /// The interrupt line and status bits, shared with the transport.
    fn interrupt(&self) -> &Arc<Interrupt>;
    /// Takes the queues: refused when active already or when the driver set up another number
    /// of queues. Event suppression follows the accepted features.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops serving and gives the queues back (empty when it was not active).
    fn reset(&mut self) -> Vec<Queue>;
}

impl<const N: usize> SharedCore for DeviceCore<N> {
    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let got = ctx.queues.len();
        let Ok(mut queues) = <[Queue; N]>::try_from(ctx.queues) else {
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

    fn reset(&mut self) -> Vec<Queue> {
        self.active
            .take()
            .map(|a| Vec::from(a.queues))
            .unwrap_or_default()
    }
}

/// A device on a [`DeviceCore`]: what it writes itself. Every such device is a
/// [`VirtioDevice`].
pub trait CoreDevice: Send {
    /// The virtio device id.
    const DEVICE_TYPE: u32;
    /// Its core (a [`DeviceCore`] with its number of queues).
    type Core: SharedCore;
    /// Short name for logs ([`VirtioDevice::name`]).
    fn label(&self) -> String;
    /// The shared state.
    fn core(&self) -> &Self::Core;
    /// The shared state, to activate and reset.
    fn core_mut(&mut self) -> &mut Self::Core;
    /// Counts refused activations.
    fn activate_fails(&self) -> &Counter;
    /// Reads the device-specific configuration space at `offset`.
    fn config_read(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space.
    fn config_write(&mut self, offset: u64, data: &[u8]);
    /// Runs after a successful activation (the queues are in `core().active`).
    fn activated(&mut self) {}
    /// Runs before the queues are given back at reset.
    fn resetting(&mut self) {}
}

impl<T: CoreDevice> VirtioDevice for T {
    fn device_type(&self) -> u32 {
        T::DEVICE_TYPE
    }

    fn name(&self) -> String {
        self.label()
    }

    fn avail_features(&self) -> u64 {
        self.core().avail_features()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        self.core().queue_max_sizes()
    }

    fn queue_events(&self) -> &[EventFd] {
        self.core().queue_events()
    }

    fn interrupt(&self) -> &Arc<Interrupt> {
        self.core().interrupt()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config_read(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config_write(offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let result = self.core_mut().activate(ctx);
        match result {
            Ok(()) => self.activated(),
            Err(_) => self.activate_fails().inc(),
        }
        result
    }

    fn reset(&mut self) -> Vec<Queue> {
        self.resetting();
        self.core_mut().reset()
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
#[path = "device_core_tests.rs"]
mod tests;
