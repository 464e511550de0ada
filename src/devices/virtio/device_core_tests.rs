//! The shared device core alone, and a minimal device built on it.

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
    assert!(matches!(
        core.activate(ctx(1, VIRTIO_F_VERSION_1)),
        Err(ActivateError::QueueCount {
            expected: 2,
            got: 1
        })
    ));
    assert!(core.active.is_none());
    core.activate(ctx(2, VIRTIO_F_VERSION_1)).unwrap();
    assert!(matches!(
        core.activate(ctx(2, VIRTIO_F_VERSION_1)),
        Err(ActivateError::AlreadyActive)
    ));
    assert_eq!(core.reset().len(), 2);
    assert!(core.reset().is_empty());
    assert_eq!(core.queue_max_sizes(), &[MAX_QUEUE_SIZE; 2]);
}

#[test]
fn event_suppression_follows_the_features_both_sides_agreed_on() {
    let both = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
    let mut offered = DeviceCore::<1>::new(both).unwrap();
    offered.activate(ctx(1, both)).unwrap();
    assert!(offered.active.as_ref().unwrap().queues[0].event_idx_enabled());
    let mut plain = DeviceCore::<1>::new(VIRTIO_F_VERSION_1).unwrap();
    plain.activate(ctx(1, both)).unwrap();
    assert!(!plain.active.as_ref().unwrap().queues[0].event_idx_enabled());
    let mut declined = DeviceCore::<1>::new(both).unwrap();
    declined.activate(ctx(1, VIRTIO_F_VERSION_1)).unwrap();
    assert!(!declined.active.as_ref().unwrap().queues[0].event_idx_enabled());
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

/// The least a device writes: its core, its counter and its config space.
struct Probe {
    core: DeviceCore<2>,
    fails: Counter,
    activated: u32,
    resets: u32,
}

impl CoreDevice for Probe {
    const DEVICE_TYPE: u32 = 99;
    type Core = DeviceCore<2>;

    fn label(&self) -> String {
        "probe".into()
    }

    fn core(&self) -> &Self::Core {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Self::Core {
        &mut self.core
    }

    fn activate_fails(&self) -> &Counter {
        &self.fails
    }

    fn config_read(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&[7], offset, data);
    }

    fn config_write(&mut self, _offset: u64, _data: &[u8]) {}

    fn activated(&mut self) {
        self.activated += 1;
    }

    fn resetting(&mut self) {
        self.resets += 1;
    }
}

#[test]
fn a_device_on_the_core_is_a_virtio_device_that_counts_refused_activations() {
    let mut probe = Probe {
        core: DeviceCore::new(VIRTIO_F_VERSION_1).unwrap(),
        fails: Counter::new(),
        activated: 0,
        resets: 0,
    };
    let device: &mut dyn VirtioDevice = &mut probe;
    assert_eq!(device.device_type(), 99);
    assert_eq!(device.name(), "probe");
    assert_eq!(device.avail_features(), VIRTIO_F_VERSION_1);
    assert_eq!(device.queue_max_sizes().len(), 2);
    assert_eq!(device.queue_events().len(), 2);
    let mut byte = [0u8; 2];
    device.read_config(0, &mut byte);
    assert_eq!(byte, [7, 0]);
    assert!(device.activate(ctx(3, VIRTIO_F_VERSION_1)).is_err());
    device.activate(ctx(2, VIRTIO_F_VERSION_1)).unwrap();
    assert!(device.activate(ctx(2, VIRTIO_F_VERSION_1)).is_err());
    assert_eq!(device.reset().len(), 2);
    assert_eq!(probe.fails.count(), 2);
    assert_eq!((probe.activated, probe.resets), (1, 1));
}
