//! Queue numbering by the accepted features, and free page hinting against mock queues: a run
//! started by the host, the guest's id, its hints given back (the mapping's RSS drops), STOP
//! acknowledged with DONE; hints outside a run, of another run, outside RAM or unaligned are
//! dropped or refused and counted.

#![allow(clippy::unwrap_used)]

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::core::{QueueRoles, Role};
use super::hinting::{FREE_PAGE_HINT_DONE, FREE_PAGE_HINT_STOP};
use super::tests::{
    config, desc, mapping_rss_kib, small_memory_with_a_hole, DEFLATE_RING, INFLATE_RING, STATS_RING,
};
use super::*;
use crate::devices::virtio::{ActivateContext, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::vstate::memory::{create_guest_memory, GuestMemory};

/// Where the tests write the guest's command ids.
const CMD_AT: u64 = 0x3_c000;

#[test]
fn optional_queues_are_numbered_by_the_features_the_driver_accepted() {
    let all = VIRTIO_BALLOON_F_STATS_VQ
        | VIRTIO_BALLOON_F_FREE_PAGE_HINT
        | VIRTIO_BALLOON_F_PAGE_REPORTING;
    let roles = QueueRoles::of(all);
    assert_eq!(
        (roles.stats, roles.hint, roles.report),
        (Some(2), Some(3), Some(4))
    );
    assert_eq!(roles.count(), 5);
    // Statistics declined, reporting taken: reporting is queue 2, as Linux numbers it.
    let roles = QueueRoles::of(VIRTIO_BALLOON_F_PAGE_REPORTING);
    assert_eq!(
        (roles.stats, roles.hint, roles.report),
        (None, None, Some(2))
    );
    assert_eq!(roles.role(2), Role::Report);
    assert_eq!(roles.role(3), Role::Unused);
    assert_eq!(
        QueueRoles::of(VIRTIO_BALLOON_F_FREE_PAGE_HINT).role(2),
        Role::Hint
    );
    // The device offers all three; a driver accepting only reporting sets up three queues.
    let metrics = Arc::new(BalloonDeviceMetrics::new());
    let cfg = BalloonConfig {
        stats_polling_interval_s: 1,
        free_page_hinting: true,
        free_page_reporting: true,
        ..config(0)
    };
    let balloon = Balloon::new(&cfg, metrics).unwrap();
    assert_eq!(balloon.queue_max_sizes().len(), 5);
    let accepted = VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_PAGE_REPORTING;
    assert_eq!(balloon.queues_in_use(accepted), 3);
    // Features never offered do not count.
    let plain = Balloon::new(&config(0), Arc::new(BalloonDeviceMetrics::new())).unwrap();
    assert_eq!(plain.queues_in_use(u64::MAX), 2);
}

#[test]
fn a_driver_that_declines_statistics_gets_reporting_at_queue_2() {
    let mem = create_guest_memory(32 << 20, MemoryOptions::default()).unwrap();
    let inflate = MockSplitQueue::create(&mem, GuestAddress(INFLATE_RING), 16);
    let deflate = MockSplitQueue::create(&mem, GuestAddress(DEFLATE_RING), 16);
    let report = MockSplitQueue::create(&mem, GuestAddress(STATS_RING), 16);
    let metrics = Arc::new(BalloonDeviceMetrics::new());
    let cfg = BalloonConfig {
        stats_polling_interval_s: 1,
        free_page_reporting: true,
        ..config(0)
    };
    let mut balloon = Balloon::new(&cfg, metrics.clone()).unwrap();
    balloon
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![
                inflate.create_queue().unwrap(),
                deflate.create_queue().unwrap(),
                report.create_queue().unwrap(),
                Queue::new(256).unwrap(),
            ],
            features: VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_PAGE_REPORTING,
        })
        .unwrap();
    let w = VRING_DESC_F_WRITE as u16;
    report
        .add_desc_chains(&[desc(16 << 20, 2 << 20, w)], 0)
        .unwrap();
    balloon.process_report_queue();
    assert_eq!(report.used().idx().load(), 1);
    assert_eq!(metrics.free_page_report_freed.count(), 2 << 20);
    // Statistics were declined: no statistics queue is served, none is asked of.
    balloon.process_stats_queue();
    balloon.request_stats();
    assert_eq!(metrics.stats_updates_count.count(), 0);
}

/// A balloon offering hinting, activated with it (its hinting queue is queue 2).
fn hinting_rig(
    mem: &GuestMemory,
) -> (
    Balloon,
    MockSplitQueue<'_, GuestMemory>,
    Arc<BalloonDeviceMetrics>,
) {
    let inflate = MockSplitQueue::create(mem, GuestAddress(INFLATE_RING), 16);
    let deflate = MockSplitQueue::create(mem, GuestAddress(DEFLATE_RING), 16);
    let hint = MockSplitQueue::create(mem, GuestAddress(STATS_RING), 16);
    let metrics = Arc::new(BalloonDeviceMetrics::new());
    let cfg = BalloonConfig {
        free_page_hinting: true,
        ..config(0)
    };
    let mut balloon = Balloon::new(&cfg, metrics.clone()).unwrap();
    balloon
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![
                inflate.create_queue().unwrap(),
                deflate.create_queue().unwrap(),
                hint.create_queue().unwrap(),
            ],
            features: VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_FREE_PAGE_HINT,
        })
        .unwrap();
    (balloon, hint, metrics)
}

fn cmd_id(balloon: &Balloon) -> u32 {
    let mut word = [0u8; 4];
    balloon.read_config(8, &mut word);
    u32::from_le_bytes(word)
}

/// A device-readable 4-byte buffer holding command id `id`, at CMD_AT + `slot` * 4.
fn id_buffer(mem: &GuestMemory, slot: u64, id: u32) -> virtio_queue::desc::RawDescriptor {
    let at = CMD_AT + slot * 4;
    mem.write_slice(&id.to_le_bytes(), GuestAddress(at))
        .unwrap();
    desc(at, 4, 0)
}

#[test]
fn a_hinting_run_gives_back_the_hinted_ranges_and_stop_is_acknowledged_with_done() {
    let mem = create_guest_memory(32 << 20, MemoryOptions::default()).unwrap();
    let host = mem.iter().next().unwrap().as_ptr() as usize;
    let fill = vec![0x5au8; 1 << 20];
    for mib in 16..24u64 {
        mem.write_slice(&fill, GuestAddress(mib << 20)).unwrap();
    }
    let (mut balloon, q, metrics) = hinting_rig(&mem);
    assert_eq!(cmd_id(&balloon), FREE_PAGE_HINT_STOP);
    let status = balloon.hinting_status().unwrap();
    assert_eq!((status.host_cmd, status.guest_cmd), (0, None));
    balloon.start_hinting(StartHintingCmd::default()).unwrap();
    assert_eq!(cmd_id(&balloon), 2);
    let before = mapping_rss_kib(host);
    let w = VRING_DESC_F_WRITE as u16;
    let mut chains = vec![id_buffer(&mem, 0, 2)];
    chains.extend((0..4u64).map(|i| desc((16 << 20) + (i << 21), 2 << 20, w)));
    chains.push(id_buffer(&mem, 1, FREE_PAGE_HINT_STOP));
    q.add_desc_chains(&chains, 0).unwrap();
    balloon.process_hint_queue();
    assert_eq!(q.used().idx().load(), 6);
    assert_eq!(metrics.free_page_hint_count.count(), 4);
    assert_eq!(metrics.free_page_hint_freed.count(), 8 << 20);
    assert_eq!(metrics.free_page_hint_fails.count(), 0);
    let dropped = before.saturating_sub(mapping_rss_kib(host));
    assert!(
        (7 * 1024..=8 * 1024).contains(&dropped),
        "dropped {dropped} KiB"
    );
    // acknowledge_on_stop (the default): DONE as soon as the guest said STOP.
    assert_eq!(cmd_id(&balloon), FREE_PAGE_HINT_DONE);
    let status = balloon.hinting_status().unwrap();
    assert_eq!((status.host_cmd, status.guest_cmd), (1, Some(0)));
    // The next run gets the next id; without acknowledge_on_stop the host stops it.
    let no_ack = StartHintingCmd {
        acknowledge_on_stop: false,
    };
    balloon.start_hinting(no_ack).unwrap();
    assert_eq!(cmd_id(&balloon), 3);
    let stop = id_buffer(&mem, 2, FREE_PAGE_HINT_STOP);
    q.add_desc_chains(&[id_buffer(&mem, 3, 3), stop], 6)
        .unwrap();
    balloon.process_hint_queue();
    assert_eq!(cmd_id(&balloon), 3, "no acknowledgement asked for");
    balloon.stop_hinting().unwrap();
    assert_eq!(cmd_id(&balloon), FREE_PAGE_HINT_DONE);
}

#[test]
fn hints_outside_a_run_of_another_run_outside_ram_or_unaligned_are_never_given_back() {
    let mem = small_memory_with_a_hole();
    let (mut balloon, q, metrics) = hinting_rig(&mem);
    let w = VRING_DESC_F_WRITE as u16;
    let good = |at: u64| desc(at, 0x1000, w);
    // No run yet: a hint, even named with an id, is dropped.
    q.add_desc_chains(&[id_buffer(&mem, 0, 2), good(0x10_0000)], 0)
        .unwrap();
    balloon.process_hint_queue();
    balloon.start_hinting(StartHintingCmd::default()).unwrap();
    let hostile = [
        // The run's id not sent yet (the guest's last id is 2 from before: the run is 2).
        id_buffer(&mem, 1, 7),
        good(0x10_0000),
        id_buffer(&mem, 2, 2),
        // In the MMIO hole, past RAM, unaligned, short, empty, readable of 8 bytes.
        desc(0x40_0000, 0x1000, w),
        desc(0x80_0000, 0x1000, w),
        desc(0x10_0800, 0x1000, w),
        desc(0x10_0000, 0x800, w),
        desc(0x10_0000, 0, w),
        desc(0x10_0000, 8, 0),
    ];
    q.add_desc_chains(&hostile, 2).unwrap();
    balloon.process_hint_queue();
    assert_eq!(q.used().idx().load(), 11);
    assert_eq!(metrics.free_page_hint_count.count(), 0);
    assert_eq!(metrics.free_page_hint_freed.count(), 0);
    assert_eq!(metrics.free_page_hint_fails.count(), 6);
    assert_eq!(metrics.madvise_fails.count(), 0);
    // After DONE, hints of the ended run are dropped.
    balloon.stop_hinting().unwrap();
    q.add_desc_chains(&[good(0x10_0000)], 11).unwrap();
    balloon.process_hint_queue();
    assert_eq!(metrics.free_page_hint_count.count(), 0);
}

#[test]
fn hinting_routes_are_refused_without_hinting_and_before_activation() {
    let mut plain = Balloon::new(&config(0), Arc::new(BalloonDeviceMetrics::new())).unwrap();
    for e in [
        plain.start_hinting(StartHintingCmd::default()).unwrap_err(),
        plain.stop_hinting().unwrap_err(),
        plain.hinting_status().unwrap_err(),
    ] {
        assert_eq!(e.to_string(), "Attempting to use hinting when not enabled");
    }
    let cfg = BalloonConfig {
        free_page_hinting: true,
        ..config(0)
    };
    let mut inactive = Balloon::new(&cfg, Arc::new(BalloonDeviceMetrics::new())).unwrap();
    assert!(matches!(
        inactive.start_hinting(StartHintingCmd::default()),
        Err(BalloonError::NotActive)
    ));
    assert_eq!(inactive.hinting_status().unwrap().host_cmd, 0);
    assert_eq!(
        serde_json::to_string(&inactive.hinting_status().unwrap()).unwrap(),
        r#"{"host_cmd":0,"guest_cmd":null}"#
    );
}

#[test]
fn one_kick_gives_back_a_bounded_amount_of_hinted_memory() {
    let mem = create_guest_memory(32 << 20, MemoryOptions::default()).unwrap();
    let (mut balloon, q, metrics) = hinting_rig(&mem);
    balloon.start_hinting(StartHintingCmd::default()).unwrap();
    let w = VRING_DESC_F_WRITE as u16;
    // The run's id, then 15 hints of the 16 MiB from 16 MiB: 240 MiB, the budget is 64 MiB.
    let mut chains = vec![id_buffer(&mem, 0, 2)];
    chains.extend((0..15).map(|_| desc(16 << 20, 16 << 20, w)));
    q.add_desc_chains(&chains, 0).unwrap();
    balloon.process_hint_queue();
    let used = u64::from(q.used().idx().load());
    assert!((2..=6).contains(&used), "{used} requests in one kick");
    assert_eq!(
        metrics.free_page_hint_freed.count(),
        (used - 1) * (16 << 20)
    );
    // The rest waits for the next kick (the device notified itself).
    balloon.process_hint_queue();
    assert!(u64::from(q.used().idx().load()) > used);
}

#[test]
fn one_chain_of_hints_over_all_of_guest_ram_gives_back_no_more_than_one_kicks_budget() {
    use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    let mem = create_guest_memory(256 << 20, MemoryOptions::default()).unwrap();
    let (mut balloon, q, metrics) = hinting_rig(&mem);
    balloon.start_hinting(StartHintingCmd::default()).unwrap();
    q.add_desc_chains(&[id_buffer(&mem, 0, 2)], 0).unwrap();
    balloon.process_hint_queue();
    // The attack: ONE request whose 15 buffers hint 240 MiB (a guest with more RAM hints all
    // of it the same way). The drain's budget is checked between requests, so without a
    // bound inside the request the VMM thread zaps all of it in one go (about 34 ms per
    // populated GiB here). Linux hints 4 MiB per request.
    let (n, w) = (15u16, (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16);
    let chain: Vec<RawDescriptor> = (1..=n)
        .map(|i| {
            let flags = if i == n { VRING_DESC_F_WRITE as u16 } else { w };
            let addr = u64::from(i) << 24;
            RawDescriptor::from(Descriptor::new(addr, 16 << 20, flags, i + 1))
        })
        .collect();
    q.add_desc_chains(&chain, 1).unwrap();
    balloon.process_hint_queue();
    assert_eq!(q.used().idx().load(), 2, "the request is answered");
    let freed = metrics.free_page_hint_freed.count();
    assert!(
        freed > 0 && freed <= 64 << 20,
        "{} MiB in one kick",
        freed >> 20
    );
    // What is past the budget is dropped (a hint may be ignored) and counted.
    assert!(metrics.free_page_hint_fails.count() > 0);
}

#[test]
fn a_restored_hinting_run_ends_with_done() {
    let mem = small_memory_with_a_hole();
    let (mut balloon, _, _) = hinting_rig(&mem);
    balloon.start_hinting(StartHintingCmd::default()).unwrap();
    let state = balloon.save_state();
    assert_eq!(state.hinting.host_cmd, 2);
    let (mut clone, _, _) = hinting_rig(&mem);
    clone.restore_state(&state).unwrap();
    assert_eq!(cmd_id(&clone), 2);
    clone.end_hinting_after_restore();
    assert_eq!(cmd_id(&clone), FREE_PAGE_HINT_DONE);
    // The next run continues the restored numbering.
    clone.start_hinting(StartHintingCmd::default()).unwrap();
    assert_eq!(cmd_id(&clone), 3);
}

#[test]
fn queues_a_driver_set_up_but_did_not_accept_are_never_served_and_their_kicks_are_drained() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::sync::Mutex;
    let mem = create_guest_memory(32 << 20, MemoryOptions::default()).unwrap();
    let inflate = MockSplitQueue::create(&mem, GuestAddress(INFLATE_RING), 16);
    let deflate = MockSplitQueue::create(&mem, GuestAddress(DEFLATE_RING), 16);
    // The attack: the device offers hinting and reporting, the driver accepts neither but
    // sets up queues 2 and 3 anyway with requests in them (a hint and a report of 16 MiB),
    // then notifies them.
    let extra = MockSplitQueue::create(&mem, GuestAddress(STATS_RING), 16);
    let w = VRING_DESC_F_WRITE as u16;
    extra
        .add_desc_chains(&[id_buffer(&mem, 0, 2), desc(16 << 20, 16 << 20, w)], 0)
        .unwrap();
    let cfg = BalloonConfig {
        free_page_hinting: true,
        free_page_reporting: true,
        ..config(0)
    };
    let metrics = Arc::new(BalloonDeviceMetrics::new());
    let mut balloon = Balloon::new(&cfg, metrics.clone()).unwrap();
    balloon
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![
                inflate.create_queue().unwrap(),
                deflate.create_queue().unwrap(),
                extra.create_queue().unwrap(),
                extra.create_queue().unwrap(),
            ],
            features: VIRTIO_F_VERSION_1,
        })
        .unwrap();
    // The host starts a hinting run (the device offers it), so only the roles keep queue 2
    // from being served as the hinting queue.
    balloon.start_hinting(StartHintingCmd::default()).unwrap();
    let balloon = Arc::new(Mutex::new(balloon));
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    manager.add_subscriber(balloon.clone());
    for index in [2, 3] {
        balloon.lock().unwrap().queue_events()[index]
            .write(1)
            .unwrap();
    }
    assert!(manager.run_with_timeout(0).unwrap() >= 1);
    // Read, not served: nothing used, nothing given back, nothing counted as a failure.
    assert_eq!(extra.used().idx().load(), 0);
    assert_eq!(metrics.free_page_hint_freed.count(), 0);
    assert_eq!(metrics.free_page_report_freed.count(), 0);
    assert_eq!(metrics.free_page_hint_fails.count(), 0);
    assert_eq!(metrics.event_fails.count(), 0);
    // Their notifications were consumed: the loop does not spin on them.
    assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
}
