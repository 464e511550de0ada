//! A device's interrupt line (an irqfd) and the status bits it shares with its transport:
//! InterruptStatus, DEVICE_NEEDS_RESET and the configuration generation.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What a device signals to the driver, and the state the transport reads for it.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    config_generation: AtomicU32,
    event: EventFd,
}

impl Interrupt {
    /// A line with no interrupt pending.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            config_generation: AtomicU32::new(0),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The eventfd KVM routes to the device's GSI.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    fn raise(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::AcqRel);
        self.event.write(1)
    }

    /// Tells the driver that buffers were used.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_VRING)
    }

    /// Tells the driver that the configuration space changed.
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.config_generation.fetch_add(1, Ordering::AcqRel);
        self.raise(VIRTIO_MMIO_INT_CONFIG)
    }

    /// The device can no longer serve its queues until the driver resets it: sets
    /// DEVICE_NEEDS_RESET and sends a configuration change interrupt (virtio 1.x 2.1.2).
    /// True when this call set it (false: it was already set, nothing sent).
    pub fn set_needs_reset(&self) -> bool {
        let newly = !self.needs_reset.swap(true, Ordering::AcqRel);
        if newly {
            let _ = self.raise(VIRTIO_MMIO_INT_CONFIG);
        }
        newly
    }

    /// True once [`Self::set_needs_reset`] was called, until the next reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::Acquire)
    }

    /// A device reset: no interrupt pending, no reset needed (the generation keeps counting).
    pub fn clear(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn signals_set_status_bits_and_write_the_eventfd() {
        let irq = Interrupt::new().unwrap();
        irq.signal_used_queue().unwrap();
        irq.signal_config_change().unwrap();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.event().read().unwrap(), 2);
        assert_eq!(irq.config_generation(), 1);
        irq.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
    }

    #[test]
    fn needs_reset_interrupts_once_and_clears_on_reset() {
        let irq = Interrupt::new().unwrap();
        irq.set_needs_reset();
        irq.set_needs_reset();
        assert!(irq.needs_reset());
        assert_eq!(irq.event().read().unwrap(), 1);
        irq.clear();
        assert!(!irq.needs_reset());
        assert_eq!(irq.status(), 0);
    }
}
