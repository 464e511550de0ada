//! virtio-balloon's five queues over a guest memory the fuzzer writes, shaped like real guest
//! memory (two regions around an MMIO-gap-shaped hole): rings, descriptors, page number
//! arrays, statistics buffers, hinting command ids and hints, and free page reports are all
//! guest-controlled, and so is which optional features the driver accepts (the queues are
//! numbered by them). Serving every queue, a hinting run started and stopped, must never
//! panic, never put more pages in the balloon than its target, and never give back a page
//! outside guest memory (a madvise there would fail, and `madvise_fails` would count it).

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use palisade::devices::virtio::balloon::{
    Balloon, BalloonConfig, StartHintingCmd, VIRTIO_BALLOON_F_FREE_PAGE_HINT,
    VIRTIO_BALLOON_F_PAGE_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
};
use palisade::devices::virtio::{ActivateContext, VirtioDevice, VIRTIO_F_VERSION_1};
use palisade::metrics::BalloonDeviceMetrics;
use palisade::vstate::memory::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// The low region (rings and buffers), the hole after it, and the high region.
const LOW: usize = 0x8_0000;
const HIGH_START: u64 = 0xc_0000;
const HIGH: usize = 0x8_0000;

fn queue(base: u64) -> Option<Queue> {
    let mut queue = Queue::new(16).ok()?;
    queue.set_size(16);
    queue.set_desc_table_address(Some(base as u32), Some(0));
    queue.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
    queue.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
    queue.set_ready(true);
    Some(queue)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[amount_mib, accepted], body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let Ok(mem) = GuestMemory::from_ranges(&[
        (GuestAddress(0), LOW),
        (GuestAddress(HIGH_START), HIGH),
    ]) else {
        return;
    };
    let (low, high) = body.split_at(body.len().min(LOW));
    let high = &high[..high.len().min(HIGH)];
    if mem.write_slice(low, GuestAddress(0)).is_err()
        || mem.write_slice(high, GuestAddress(HIGH_START)).is_err()
    {
        return;
    }
    let config = BalloonConfig {
        amount_mib: u32::from(amount_mib % 2),
        stats_polling_interval_s: 1,
        free_page_hinting: true,
        free_page_reporting: true,
        ..BalloonConfig::default()
    };
    let metrics = Arc::new(BalloonDeviceMetrics::new());
    let Ok(mut balloon) = Balloon::new(&config, metrics.clone()) else {
        return;
    };
    // The driver accepts any subset of the optional queues.
    let optional = [
        VIRTIO_BALLOON_F_STATS_VQ,
        VIRTIO_BALLOON_F_FREE_PAGE_HINT,
        VIRTIO_BALLOON_F_PAGE_REPORTING,
    ];
    let features = optional
        .iter()
        .enumerate()
        .filter(|(i, _)| accepted & (1 << i) != 0)
        .fold(VIRTIO_F_VERSION_1, |f, (_, bit)| f | bit);
    let queues: Option<Vec<Queue>> = (0..5u64).map(|i| queue(i * 0x1000)).collect();
    let Some(queues) = queues else {
        return;
    };
    let ctx = ActivateContext {
        mem,
        queues,
        features,
    };
    if balloon.activate(ctx).is_err() {
        return;
    }
    let _ = balloon.start_hinting(StartHintingCmd {
        acknowledge_on_stop: accepted & 0x80 != 0,
    });
    for round in 0..2 {
        balloon.process_queue(0);
        balloon.process_queue(1);
        balloon.process_stats_queue();
        balloon.process_hint_queue();
        balloon.process_report_queue();
        balloon.request_stats();
        if round == 0 && accepted & 0x40 != 0 {
            let _ = balloon.stop_hinting();
        }
    }
    assert!(balloon.inflated_pages() <= balloon.target_pages());
    assert_eq!(metrics.madvise_fails.count(), 0);
    let _ = balloon.latest_stats();
    let _ = balloon.hinting_status();
});
