//! The transport driven like a driver would (and like a hostile one would).

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACK, VIRTIO_CONFIG_S_DRIVER as DRV,
    VIRTIO_CONFIG_S_DRIVER_OK as DOK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK as FOK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::Queue;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::virtio::{ActivateError, VIRTIO_RING_F_EVENT_IDX};

/// Dummy's feature bit that leaves its second queue unused (as the balloon's optional queues
/// follow the features the driver accepts).
const ONE_QUEUE: u64 = 1 << 2;

/// A device with two queues that records its activations.
struct Dummy {
    events: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    active: Option<Vec<Queue>>,
    activations: usize,
    features: u64,
}

impl Dummy {
    fn new() -> Self {
        Self {
            events: vec![
                EventFd::new(EFD_NONBLOCK).unwrap(),
                EventFd::new(EFD_NONBLOCK).unwrap(),
            ],
            interrupt: Arc::new(Interrupt::new().unwrap()),
            active: None,
            activations: 0,
            features: 0,
        }
    }
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn name(&self) -> String {
        "dummy".into()
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | ONE_QUEUE | 1
    }
    fn queues_in_use(&self, features: u64) -> usize {
        if features & ONE_QUEUE != 0 {
            1
        } else {
            2
        }
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.events
    }
    fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::read_config_bytes(&[1, 2, 3, 4], offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.activations += 1;
        self.features = ctx.features;
        self.active = Some(ctx.queues);
        Ok(())
    }
    fn reset(&mut self) -> Vec<Queue> {
        self.active.take().unwrap_or_default()
    }
}

fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>) {
    let dummy = Arc::new(Mutex::new(Dummy::new()));
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    (MmioTransport::new(dummy.clone(), mem).unwrap(), dummy)
}

fn read(t: &mut MmioTransport, offset: u32) -> u32 {
    let mut data = [0u8; 4];
    t.read(u64::from(offset), &mut data);
    u32::from_le_bytes(data)
}

fn write(t: &mut MmioTransport, offset: u32, value: u32) {
    t.write(u64::from(offset), &value.to_le_bytes());
}

/// The Linux driver's sequence up to FEATURES_OK.
fn negotiate(t: &mut MmioTransport, features: u64) {
    write(t, VIRTIO_MMIO_STATUS, 0);
    write(t, VIRTIO_MMIO_STATUS, ACK);
    write(t, VIRTIO_MMIO_STATUS, ACK | DRV);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    write(t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK);
}

fn setup_queue(t: &mut MmioTransport, index: u32, base: u64) {
    write(t, VIRTIO_MMIO_QUEUE_SEL, index);
    write(t, VIRTIO_MMIO_QUEUE_NUM, 8);
    write(t, VIRTIO_MMIO_QUEUE_DESC_LOW, base as u32);
    write(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
    write(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (base + 0x1000) as u32);
    write(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
    write(t, VIRTIO_MMIO_QUEUE_USED_LOW, (base + 0x2000) as u32);
    write(t, VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
    write(t, VIRTIO_MMIO_QUEUE_READY, 1);
}

#[test]
fn identity_registers_read_as_virtio_mmio_version_2() {
    let (mut t, _) = setup();
    assert_eq!(read(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(read(&mut t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
    write(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        read(&mut t, VIRTIO_MMIO_DEVICE_FEATURES),
        1,
        "VERSION_1 is bit 32"
    );
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 2);
    assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0, "no third queue");
    let mut config = [0u8; 2];
    t.read(u64::from(VIRTIO_MMIO_CONFIG) + 2, &mut config);
    assert_eq!(config, [3, 4]);
}

#[test]
fn the_driver_sequence_activates_the_device_with_its_queues() {
    let (mut t, dummy) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK | DRV | FOK);
    setup_queue(&mut t, 0, 0x1_0000);
    setup_queue(&mut t, 1, 0x2_0000);
    write(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK | DRV | FOK | DOK);
    let d = dummy.lock().unwrap();
    assert_eq!(d.activations, 1);
    assert_eq!(d.features, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    let queues = d.active.as_ref().unwrap();
    assert_eq!(queues.len(), 2);
    assert_eq!(queues[1].desc_table(), 0x2_0000);
    // Notifications possibly sent before activation are replayed.
    assert_eq!(d.events[0].read().unwrap(), 1);
}

#[test]
fn a_reset_takes_the_queues_back_and_clears_everything() {
    let (mut t, dummy) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 0x1_0000);
    setup_queue(&mut t, 1, 0x2_0000);
    write(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    dummy.lock().unwrap().interrupt.set_needs_reset();
    assert_ne!(
        read(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    write(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
    assert!(dummy.lock().unwrap().active.is_none());
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    // And the device can be brought up again.
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 0x3_0000);
    setup_queue(&mut t, 1, 0x4_0000);
    write(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert_eq!(dummy.lock().unwrap().activations, 2);
}

#[test]
fn features_without_version_1_or_not_offered_are_refused() {
    let (mut t, _) = setup();
    negotiate(&mut t, 1);
    assert_eq!(
        read(&mut t, VIRTIO_MMIO_STATUS),
        ACK | DRV,
        "FEATURES_OK stays clear"
    );
    let (mut t, _) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 40);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK | DRV);
}

#[test]
fn out_of_order_status_and_late_queue_writes_are_ignored() {
    let (mut t, dummy) = setup();
    write(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 0x1_0000);
    setup_queue(&mut t, 1, 0x2_0000);
    write(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    let before = crate::metrics::METRICS.virtio.mmio_ignored_accesses.count();
    // After DRIVER_OK the queue belongs to the device.
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x9_0000);
    assert_eq!(
        dummy.lock().unwrap().active.as_ref().unwrap()[0].desc_table(),
        0x1_0000
    );
    // Wrong widths and unknown registers.
    t.write(u64::from(VIRTIO_MMIO_STATUS), &[0]);
    let mut wide = [0u8; 8];
    t.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut wide);
    assert_eq!(wide, [0; 8]);
    write(&mut t, 0xf0, 1);
    assert!(crate::metrics::METRICS.virtio.mmio_ignored_accesses.count() >= before + 4);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK | DRV | FOK | DOK);
    write(
        &mut t,
        VIRTIO_MMIO_STATUS,
        ACK | DRV | FOK | DOK | VIRTIO_CONFIG_S_FAILED,
    );
    assert_ne!(read(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FAILED, 0);
}

#[test]
fn queues_outside_memory_or_not_ready_fail_activation_with_needs_reset() {
    let (mut t, dummy) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 0x1_0000);
    // Queue 1's used ring is past the end of guest memory.
    setup_queue(&mut t, 1, 0xf_e000);
    write(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert_eq!(dummy.lock().unwrap().activations, 0);
    assert_ne!(
        read(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    assert_ne!(
        read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
        0
    );

    let (mut t, dummy) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 0x1_0000);
    write(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert_eq!(
        dummy.lock().unwrap().activations,
        0,
        "queue 1 was never made ready"
    );
}

#[test]
fn queues_the_accepted_features_leave_unused_need_no_setup_and_are_handed_over_unset() {
    let (mut t, dummy) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1 | ONE_QUEUE);
    setup_queue(&mut t, 0, 0x1_0000);
    write(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK | DRV | FOK | DOK);
    let d = dummy.lock().unwrap();
    assert_eq!(d.activations, 1);
    let queues = d.active.as_ref().unwrap();
    assert_eq!(queues.len(), 2, "every queue is handed over");
    assert!(queues[0].ready() && !queues[1].ready());
    drop(d);
    // The queue in use is still checked: outside memory, the activation fails.
    let (mut t, dummy) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1 | ONE_QUEUE);
    setup_queue(&mut t, 0, 0xf_e000);
    write(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    assert_eq!(dummy.lock().unwrap().activations, 0);
}

#[test]
fn invalid_queue_sizes_and_misaligned_rings_are_refused() {
    let (mut t, _) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    let before = crate::metrics::METRICS.virtio.mmio_ignored_accesses.count();
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 12);
    write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 32);
    write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 0x1_0008);
    write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1001);
    assert!(crate::metrics::METRICS.virtio.mmio_ignored_accesses.count() >= before + 4);
}

/// An active transport (both queues set up and handed to the device), and its saved state.
fn active_and_saved() -> (MmioTransport, Arc<Mutex<Dummy>>, TransportState) {
    let (mut t, dummy) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    setup_queue(&mut t, 0, 0x1_0000);
    setup_queue(&mut t, 1, 0x2_0000);
    write(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV | FOK | DOK);
    let state = t.save();
    (t, dummy, state)
}

#[test]
fn saving_an_active_transport_keeps_the_device_serving_its_queues() {
    let (_t, dummy, state) = active_and_saved();
    assert!(state.active);
    assert_eq!(state.status, ACK | DRV | FOK | DOK);
    assert_eq!(state.queues.len(), 2);
    assert_eq!(state.queues[1].desc_table, 0x2_0000);
    assert_eq!(state.queues[1].used_ring, 0x2_2000);
    let d = dummy.lock().unwrap();
    assert_eq!(d.activations, 2, "taken back and given again");
    assert!(d.active.is_some());
}

#[test]
fn a_saved_transport_restores_into_a_fresh_one_and_activates_its_device() {
    let (_t, _, state) = active_and_saved();
    let (mut fresh, dummy) = setup();
    fresh.restore(&state).unwrap();
    assert_eq!(read(&mut fresh, VIRTIO_MMIO_STATUS), ACK | DRV | FOK | DOK);
    let d = dummy.lock().unwrap();
    assert_eq!(d.activations, 1);
    assert_eq!(d.features, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    let queues = d.active.as_ref().unwrap();
    assert_eq!(queues[0].desc_table(), 0x1_0000);
    drop(d);
    assert_eq!(fresh.save(), state);
}

#[test]
fn hostile_transport_states_are_refused_before_the_device_sees_them() {
    let (_t, _, good) = active_and_saved();
    let mut cases: Vec<(&str, TransportState)> = Vec::new();
    let mut s = good.clone();
    s.status = ACK | DOK;
    cases.push(("status off the state machine", s));
    let mut s = good.clone();
    s.status = ACK | DRV | FOK;
    cases.push(("active without DRIVER_OK", s));
    let mut s = good.clone();
    s.driver_features |= 1 << 40;
    cases.push(("features never offered", s));
    let mut s = good.clone();
    s.queues.pop();
    cases.push(("a queue missing", s));
    let mut s = good.clone();
    s.queues[0].size = 12;
    cases.push(("size not a power of two", s));
    let mut s = good.clone();
    s.queues[1].size = 16;
    cases.push(("size above the maximum", s));
    let mut s = good.clone();
    s.queues[0].size = 0;
    cases.push(("size zero", s));
    let mut s = good.clone();
    s.queues[0].used_ring = 0x10_0000 - 8;
    cases.push(("used ring past the end of memory", s));
    let mut s = good.clone();
    s.queues[1].desc_table = u64::MAX - 4;
    cases.push(("descriptor table at the top of the address space", s));
    let mut s = good.clone();
    s.queues[0].ready = false;
    cases.push(("an active queue not ready", s));
    for (what, state) in cases {
        let (mut fresh, dummy) = setup();
        assert!(fresh.restore(&state).is_err(), "{what} was accepted");
        assert!(
            dummy.lock().unwrap().active.is_none(),
            "{what}: device got queues"
        );
    }
}
