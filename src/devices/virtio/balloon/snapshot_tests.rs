//! The balloon's snapshot state: a saved device restores into a fresh one with its pages,
//! `actual` and statistics (the restored pages deflate, a duplicate inflate is refused), and
//! every hostile field of a restored state is refused with nothing changed.

#![allow(clippy::unwrap_used)]

use super::tests::{small_memory_with_a_hole, stats_buffer, stats_rig, Rig, ARRAYS, STATS_BUFFER};
use super::*;
use crate::devices::virtio::VirtioDevice;
use crate::vstate::memory::GuestMemory;

/// A device with pages 0x100 and 0x101 inflated and `actual` 2, and its state.
fn saved(mem: &GuestMemory) -> BalloonState {
    let mut rig = Rig::new(mem, 1);
    let d = rig.array(ARRAYS, &[0x100, 0x101]);
    rig.inflate_chains(&[d]);
    rig.balloon.process_queue(0);
    rig.balloon.write_config(4, &2u32.to_le_bytes());
    rig.balloon.save_state()
}

#[test]
fn a_saved_balloon_restores_its_pages_and_actual_into_a_fresh_device() {
    let mem = small_memory_with_a_hole();
    let state = saved(&mem);
    assert_eq!(state.actual_pages, 2);
    let mut rig = Rig::new(&mem, 1);
    rig.balloon.restore_state(&state).unwrap();
    assert_eq!(rig.balloon.inflated_pages(), 2);
    assert_eq!(rig.balloon.actual_pages(), 2);
    // The restored ledger rules: a duplicate is refused, a restored page deflates.
    let d = rig.array(ARRAYS, &[0x100, 0x102]);
    rig.inflate_chains(&[d]);
    rig.balloon.process_queue(0);
    assert_eq!(rig.metrics.refused_pfns.count(), 1);
    let d = rig.array(ARRAYS + 0x1000, &[0x101]);
    rig.deflate.add_desc_chains(&[d], 0).unwrap();
    rig.balloon.process_queue(1);
    assert_eq!(rig.metrics.deflated_pages.count(), 1);
    assert_eq!(rig.balloon.inflated_pages(), 2);
}

#[test]
fn a_saved_statistics_buffer_and_values_are_restored_and_the_buffer_given_back_on_request() {
    let mem = small_memory_with_a_hole();
    let (mut balloon, q, _) = stats_rig(&mem);
    let d = stats_buffer(&mem, STATS_BUFFER, &[(4, 1000), (5, 4000)]);
    q.add_desc_chains(&[d], 0).unwrap();
    balloon.process_stats_queue();
    let state = balloon.save_state();
    assert_eq!(state.stats_head, Some(0));
    assert_eq!(state.stats, [(4, 1000), (5, 4000)]);
    let (mut fresh, q, _) = stats_rig(&mem);
    fresh.restore_state(&state).unwrap();
    let stats = fresh.latest_stats().unwrap();
    assert_eq!(
        (stats.free_memory, stats.total_memory),
        (Some(1000), Some(4000))
    );
    fresh.request_stats();
    assert_eq!(q.used().idx().load(), 1, "the held buffer went back");
}

#[test]
fn hostile_balloon_states_are_refused_and_change_nothing() {
    let mem = small_memory_with_a_hole();
    let good = saved(&mem);
    // 8 MiB of address space: 2,048 frames, 32 words; the hole is 4 MiB to 6 MiB.
    let words = good.inflated.as_ref().unwrap().len();
    assert_eq!(words, 32);
    let mut in_hole = vec![0u64; words];
    in_hole[(0x400 / 64) as usize] = 1;
    let cases: Vec<(&str, BalloonState)> = vec![
        (
            "actual past RAM",
            BalloonState {
                actual_pages: 1537,
                ..good.clone()
            },
        ),
        (
            "actual u32::MAX",
            BalloonState {
                actual_pages: u32::MAX,
                ..good.clone()
            },
        ),
        (
            "a held statistics buffer without a statistics queue",
            BalloonState {
                stats_head: Some(0),
                ..good.clone()
            },
        ),
        (
            "an unknown statistics tag",
            BalloonState {
                stats: vec![(16, 1)],
                ..good.clone()
            },
        ),
        (
            "a repeated statistics tag",
            BalloonState {
                stats: vec![(4, 1), (4, 2)],
                ..good.clone()
            },
        ),
        (
            "a bitmap one word short",
            BalloonState {
                inflated: Some(vec![0; words - 1]),
                ..good.clone()
            },
        ),
        (
            "a bitmap of a million words",
            BalloonState {
                inflated: Some(vec![u64::MAX; 1 << 20]),
                ..good.clone()
            },
        ),
        (
            "a page in the MMIO hole",
            BalloonState {
                inflated: Some(in_hole),
                ..good.clone()
            },
        ),
    ];
    for (what, state) in cases {
        let mut rig = Rig::new(&mem, 1);
        assert!(rig.balloon.restore_state(&state).is_err(), "{what}");
        assert_eq!(
            rig.balloon.save_state(),
            BalloonState::default(),
            "{what}: changed"
        );
    }
    // An inactive device holds nothing.
    let metrics = Arc::new(BalloonDeviceMetrics::new());
    let mut inactive = Balloon::new(&BalloonConfig::default(), metrics).unwrap();
    assert!(matches!(
        inactive.restore_state(&good),
        Err(BalloonStateError::Actual(2, 0))
    ));
    let ledger_only = BalloonState {
        actual_pages: 0,
        ..good.clone()
    };
    assert!(matches!(
        inactive.restore_state(&ledger_only),
        Err(BalloonStateError::InactiveLedger)
    ));
    inactive.restore_state(&BalloonState::default()).unwrap();
}

#[test]
fn a_statistics_buffer_past_the_queue_is_refused() {
    let mem = small_memory_with_a_hole();
    let (mut balloon, _, _) = stats_rig(&mem);
    let state = BalloonState {
        stats_head: Some(16),
        ..BalloonState::default()
    };
    assert!(matches!(
        balloon.restore_state(&state),
        Err(BalloonStateError::StatsHead(16, _))
    ));
}

#[test]
fn the_driver_cannot_write_an_actual_past_guest_ram_or_before_activation() {
    let mem = small_memory_with_a_hole();
    let mut rig = Rig::new(&mem, 1);
    // 6 MiB of RAM: 1,536 pages.
    rig.balloon.write_config(4, &1536u32.to_le_bytes());
    assert_eq!(rig.balloon.actual_pages(), 1536);
    rig.balloon.write_config(4, &1537u32.to_le_bytes());
    assert_eq!(rig.balloon.actual_pages(), 1536);
    assert_eq!(rig.metrics.execute_fails.count(), 1);
    let metrics = Arc::new(BalloonDeviceMetrics::new());
    let mut inactive = Balloon::new(&BalloonConfig::default(), metrics.clone()).unwrap();
    inactive.write_config(4, &1u32.to_le_bytes());
    assert_eq!(inactive.actual_pages(), 0);
    assert_eq!(metrics.execute_fails.count(), 1);
}
