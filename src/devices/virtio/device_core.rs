//! The part every virtio device shares: its name, its offered features, its queue notification
//! events, its interrupt, the counters every device has, and the guest memory and queues it
//! holds between activation and reset.
//!
//! A device embeds one [`DeviceCore`] and implements [`CoreDevice`] (its id, its config space
//! and the hooks it needs; `core_accessors!` writes the two accessors); [`VirtioDevice`]
//! follows from that (accessors, activation checks and their counter, reset). The event-loop
//! chores (a queue event, a rate limiter's timer, watching the events, what a drain leaves to
//! do: the used-buffer interrupt, the self-kick, needs-reset) are methods of the core too
//! (`device_core_events.rs`), so a new device writes only its label, its config space and its queue logic.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::Interrupt;
use super::queue::MAX_QUEUE_SIZE;
use super::{ActivateContext, ActivateError, VirtioDevice, VIRTIO_RING_F_EVENT_IDX};
use crate::logger::RateLimitedLog;
use crate::metrics::DeviceCoreCounters;
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

/// How a device names itself.
pub struct DeviceLabel {
    /// Its short name ([`VirtioDevice::name`]), e.g. `block rootfs`.
    pub name: String,
    /// How its log lines start, e.g. `Drive rootfs`.
    pub who: String,
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
    label: DeviceLabel,
    counters: Arc<dyn DeviceCoreCounters>,
    needs_reset_log: RateLimitedLog,
}

impl<const N: usize> DeviceCore<N> {
    /// An inactive core offering `avail_features`, with fresh events and interrupt, counting
    /// into the device's group `counters`.
    pub fn new(
        avail_features: u64,
        label: DeviceLabel,
        counters: Arc<dyn DeviceCoreCounters>,
    ) -> std::io::Result<Self> {
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
            label,
            counters,
            needs_reset_log: RateLimitedLog::new(),
        })
    }

    /// How the device's log lines start.
    pub fn who(&self) -> &str {
        &self.label.who
    }
}

/// The [`VirtioDevice`] plumbing of a [`DeviceCore`], whatever its number of queues.
pub trait SharedCore: Send {
    /// The device's short name.
    fn name(&self) -> &str;
    /// Features offered to the driver.
    fn avail_features(&self) -> u64;
    /// The largest size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// One eventfd per queue.
    fn queue_events(&self) -> &[EventFd];
    /// The interrupt line and status bits, shared with the transport.
    fn interrupt(&self) -> &Arc<Interrupt>;
    /// Takes the queues: refused (and counted) when active already or when the driver set up
    /// another number of queues. Event suppression follows the accepted features.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops serving and gives the queues back (empty when it was not active).
    fn reset(&mut self) -> Vec<Queue>;
    /// The active queues (none when inactive).
    fn active_queues(&self) -> Option<&[Queue]>;
}

impl<const N: usize> SharedCore for DeviceCore<N> {
    fn name(&self) -> &str {
        &self.label.name
    }

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
            self.counters.activate_fails().inc();
            return Err(ActivateError::AlreadyActive);
        }
        let got = ctx.queues.len();
        let Ok(mut queues) = <[Queue; N]>::try_from(ctx.queues) else {
            self.counters.activate_fails().inc();
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

    fn active_queues(&self) -> Option<&[Queue]> {
        self.active.as_ref().map(|a| &a.queues[..])
    }
}

/// A device on a [`DeviceCore`]: what it writes itself. Every such device is a
/// [`VirtioDevice`].
pub trait CoreDevice: Send {
    /// The virtio device id.
    const DEVICE_TYPE: u32;
    /// Its core (a [`DeviceCore`] with its number of queues).
    type Core: SharedCore;
    /// The shared state.
    fn core(&self) -> &Self::Core;
    /// The shared state, to activate and reset.
    fn core_mut(&mut self) -> &mut Self::Core;
    /// Reads the device-specific configuration space at `offset`.
    fn config_read(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space.
    fn config_write(&mut self, offset: u64, data: &[u8]);
    /// See [`VirtioDevice::queues_in_use`]: every queue unless the device says otherwise.
    fn queues_in_use(&self, _features: u64) -> usize {
        self.core().queue_max_sizes().len()
    }
    /// Runs after a successful activation (the queues are in `core().active`).
    fn activated(&mut self) {}
    /// Runs before the queues are given back at reset.
    fn resetting(&mut self) {}
}

/// Writes [`CoreDevice::Core`] and its two accessors for a device whose core is the field
/// `$field` of type `$core`: `core_accessors!(core: DeviceCore<1>);`.
macro_rules! core_accessors {
    ($field:ident: $core:ty) => {
        type Core = $core;

        fn core(&self) -> &$core {
            &self.$field
        }

        fn core_mut(&mut self) -> &mut $core {
            &mut self.$field
        }
    };
}
pub(crate) use core_accessors;

impl<T: CoreDevice> VirtioDevice for T {
    fn device_type(&self) -> u32 {
        T::DEVICE_TYPE
    }

    fn name(&self) -> String {
        self.core().name().to_string()
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

    fn queues_in_use(&self, features: u64) -> usize {
        CoreDevice::queues_in_use(self, features)
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.core_mut().activate(ctx)?;
        self.activated();
        Ok(())
    }

    fn reset(&mut self) -> Vec<Queue> {
        self.resetting();
        self.core_mut().reset()
    }

    fn active_queues(&self) -> Option<&[Queue]> {
        self.core().active_queues()
    }
}

#[path = "device_core_events.rs"]
mod events;
pub(crate) use events::queue_and_limiter_events;

#[cfg(test)]
#[path = "device_core_tests.rs"]
mod tests;
