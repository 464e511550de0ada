//! The shared device core alone, and a minimal device built on it.

#![allow(clippy::unwrap_used)]

use vm_memory::GuestAddress;

use super::*;
use crate::devices::virtio::queue::{DrainEnd, QueueError};
use crate::devices::virtio::VIRTIO_F_VERSION_1;
use crate::metrics::{Counter, EntropyDeviceMetrics};
use crate::rate_limiter::RateLimiter;

/// A core counting into a fresh group (any device's group has the core's counters).
fn core<const N: usize>(features: u64) -> (DeviceCore<N>, Arc<EntropyDeviceMetrics>) {
    let metrics = Arc::new(EntropyDeviceMetrics::new());
    let label = DeviceLabel {
        name: "probe".into(),
        who: "Probe device".into(),
    };
    (
        DeviceCore::new(features, label, metrics.clone()).unwrap(),
        metrics,
    )
}

fn ctx(queues: usize, features: u64) -> ActivateContext {
    ActivateContext {
        mem: GuestMemory::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap(),
        queues: (0..queues).map(|_| Queue::new(16).unwrap()).collect(),
        features,
    }
}

#[test]
fn activation_refuses_a_second_activation_and_a_wrong_queue_count_and_counts_both() {
    let (mut core, metrics) = core::<2>(VIRTIO_F_VERSION_1);
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
    assert_eq!(metrics.activate_fails.count(), 2);
}

#[test]
fn event_suppression_follows_the_features_both_sides_agreed_on() {
    let both = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
    let (mut offered, _) = core::<1>(both);
    offered.activate(ctx(1, both)).unwrap();
    assert!(offered.active.as_ref().unwrap().queues[0].event_idx_enabled());
    let (mut plain, _) = core::<1>(VIRTIO_F_VERSION_1);
    plain.activate(ctx(1, both)).unwrap();
    assert!(!plain.active.as_ref().unwrap().queues[0].event_idx_enabled());
    let (mut declined, _) = core::<1>(both);
    declined.activate(ctx(1, VIRTIO_F_VERSION_1)).unwrap();
    assert!(!declined.active.as_ref().unwrap().queues[0].event_idx_enabled());
}

#[test]
fn queue_events_are_counted_consumed_and_kicked_per_queue() {
    let (core, metrics) = core::<2>(VIRTIO_F_VERSION_1);
    let seen = Counter::new();
    core.kick(1);
    assert_eq!(core.queue_events[1].read().unwrap(), 1);
    core.kick(0);
    core.on_queue_event(0, &seen);
    assert_eq!(metrics.entropy_event_fails.count(), 0);
    // Nothing pending (non-blocking read fails) and an index past the queues both count.
    core.on_queue_event(0, &seen);
    core.on_queue_event(2, &seen);
    core.kick(2);
    assert_eq!(metrics.entropy_event_fails.count(), 3);
    assert_eq!(seen.count(), 3);
}

#[test]
fn needs_reset_is_counted_and_stops_serving() {
    let (mut core, metrics) = core::<1>(VIRTIO_F_VERSION_1);
    let limiter = RateLimiter::new(&Default::default()).unwrap();
    assert!(core.serving(&limiter, None).is_none(), "inactive");
    core.activate(ctx(1, VIRTIO_F_VERSION_1)).unwrap();
    assert!(core.serving(&limiter, None).is_some());
    let end = core.finish_drain(0, DrainEnd::Broken(QueueError::NoStatus), false);
    assert!(matches!(end, DrainEnd::Broken(_)));
    assert!(core.interrupt.needs_reset());
    assert_eq!(metrics.needs_reset_count.count(), 1);
    assert!(
        core.serving(&limiter, None).is_none(),
        "waits for the reset"
    );
    // A second broken queue found before the driver's reset is the same entry.
    core.finish_drain(0, DrainEnd::Broken(QueueError::NoStatus), false);
    assert_eq!(metrics.needs_reset_count.count(), 1);
}

#[test]
fn a_drain_that_ran_out_of_budget_kicks_its_queue() {
    let (mut core, _) = core::<2>(VIRTIO_F_VERSION_1);
    core.activate(ctx(2, VIRTIO_F_VERSION_1)).unwrap();
    core.finish_drain(1, DrainEnd::Budget, false);
    assert_eq!(core.queue_events[1].read().unwrap(), 1);
    assert!(core.queue_events[0].read().is_err());
}

/// The least a device writes: its core and its config space.
struct Probe {
    core: DeviceCore<2>,
    activated: u32,
    resets: u32,
}

impl CoreDevice for Probe {
    const DEVICE_TYPE: u32 = 99;
    core_accessors!(core: DeviceCore<2>);

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
    let (core, metrics) = core::<2>(VIRTIO_F_VERSION_1);
    let mut probe = Probe {
        core,
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
    assert_eq!(metrics.activate_fails.count(), 2);
    assert_eq!((probe.activated, probe.resets), (1, 1));
}
