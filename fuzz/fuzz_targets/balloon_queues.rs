//! virtio-balloon's four queues over a guest memory the fuzzer writes: rings, descriptors,
//! page number arrays, statistics buffers and free page reports are all guest-controlled.
//! Serving the inflate, deflate, statistics and reporting queues must never panic, never put
//! more pages in the balloon than its target, and never give back a page outside guest memory
//! (a madvise there would fail, and `madvise_fails` would count it).

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use palisade::devices::virtio::balloon::{
    Balloon, BalloonConfig, VIRTIO_BALLOON_F_PAGE_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
};
use palisade::devices::virtio::{ActivateContext, VirtioDevice, VIRTIO_F_VERSION_1};
use palisade::metrics::BalloonDeviceMetrics;
use palisade::vstate::memory::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 0x10_0000;

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
    let Some((&amount_mib, body)) = data.split_first() else {
        return;
    };
    let Ok(mem) = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    let n = body.len().min(MEM);
    if mem.write_slice(&body[..n], GuestAddress(0)).is_err() {
        return;
    }
    let config = BalloonConfig {
        amount_mib: u32::from(amount_mib % 2),
        stats_polling_interval_s: 1,
        free_page_reporting: true,
        ..BalloonConfig::default()
    };
    let metrics = Arc::new(BalloonDeviceMetrics::new());
    let Ok(mut balloon) = Balloon::new(&config, metrics.clone()) else {
        return;
    };
    let (Some(inflate), Some(deflate), Some(stats), Some(report)) =
        (queue(0), queue(0x1000), queue(0x2000), queue(0x4000))
    else {
        return;
    };
    let ctx = ActivateContext {
        mem,
        queues: vec![inflate, deflate, stats, report],
        features: VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_PAGE_REPORTING,
    };
    if balloon.activate(ctx).is_err() {
        return;
    }
    for _ in 0..2 {
        balloon.process_queue(0);
        balloon.process_queue(1);
        balloon.process_stats_queue();
        balloon.process_report_queue();
        balloon.request_stats();
    }
    assert!(balloon.inflated_pages() <= balloon.target_pages());
    assert_eq!(metrics.madvise_fails.count(), 0);
    let _ = balloon.latest_stats();
});
