//! Virtio 1.x devices on the MMIO transport (register layout version 2).
//!
//! The transport ([`mmio::MmioTransport`]) owns the queues while the driver sets them up, and
//! hands them to the device's [`VirtioDevice::activate`] when the driver sets DRIVER_OK; a reset
//! takes them back ([`VirtioDevice::reset`]). A device owns its notification endpoints: one
//! eventfd per queue (registered with KVM as an ioeventfd on the QueueNotify register) and one
//! [`interrupt::Interrupt`] (an irqfd). Devices run on the VMM thread's event loop, each as an
//! event-manager subscriber; the transport runs on the vCPU threads. What every device shares
//! (offered features, queue events, interrupt, activation checks, reset, needs-reset, rate
//! limiter timers) is [`device_core`]: a device embeds a [`device_core::DeviceCore`] and
//! implements [`device_core::CoreDevice`], and is a [`VirtioDevice`] by that.
//!
//! Everything a guest writes into a queue is untrusted: [`chain`] walks descriptor chains with
//! every index checked, [`buffers`] checks every length and address against guest memory, and
//! [`queue`] drains a queue with the number of chains per wake-up capped at the queue size.

pub mod balloon;
pub mod block;
pub mod buffers;
pub mod chain;
pub mod device_core;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod rng;
pub mod vsock;

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use self::interrupt::Interrupt;
use crate::vstate::memory::GuestMemory;

/// Feature bit: virtio 1.x (every device offers it; a driver must accept it).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Feature bit: used_event / avail_event interrupt suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Errors of device activation.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device has.
    #[error("Expected {expected} queue(s), got {got}")]
    QueueCount {
        /// What the device has.
        expected: usize,
        /// What it got.
        got: usize,
    },
    /// The device is active already.
    #[error("The device is already active")]
    AlreadyActive,
}

/// What a device receives when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory, for the queues and the buffers they point to.
    pub mem: GuestMemory,
    /// The queues, configured and checked by the transport.
    pub queues: Vec<Queue>,
    /// The features both sides agreed on.
    pub features: u64,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (2 for block, 4 for entropy).
    fn device_type(&self) -> u32;
    /// Short name for logs ("block rootfs", "entropy").
    fn name(&self) -> String;
    /// Features offered to the driver (VIRTIO_F_VERSION_1 included).
    fn avail_features(&self) -> u64;
    /// The largest size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// One eventfd per queue, written by KVM when the driver notifies the queue.
    fn queue_events(&self) -> &[EventFd];
    /// The device's interrupt line and status bits, shared with the transport.
    fn interrupt(&self) -> &Arc<Interrupt>;
    /// Reads the device-specific configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (read-only for our devices).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// How many queues, from the first, the driver must set up when it accepted `features`
    /// (all of them but for a device whose queues follow its features, as the balloon's
    /// optional queues do: virtio 1.x 5.5.2); the rest are handed over unset and unused.
    fn queues_in_use(&self, _features: u64) -> usize {
        self.queue_max_sizes().len()
    }
    /// Takes the queues and starts serving them.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops serving and gives the queues back (empty when it was not active).
    fn reset(&mut self) -> Vec<Queue>;
    /// The active queues, for a snapshot, without disturbing the device; `None`
    /// when the device cannot tell (the transport then resets and reactivates it).
    fn active_queues(&self) -> Option<&[Queue]> {
        None
    }
}

/// Copies the part of `config` at `offset` into `data`; bytes past the end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(available) = config.get(start..) {
        let n = available.len().min(data.len());
        data[..n].copy_from_slice(&available[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_clamped_and_zero_filled() {
        let config = 0x1122_3344_5566_7788u64.to_le_bytes();
        let mut data = [0xffu8; 4];
        read_config_bytes(&config, 0, &mut data);
        assert_eq!(data, [0x88, 0x77, 0x66, 0x55]);
        read_config_bytes(&config, 6, &mut data);
        assert_eq!(data, [0x22, 0x11, 0, 0]);
        read_config_bytes(&config, 100, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
