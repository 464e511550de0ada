//! Free page reporting (VIRTIO_BALLOON_F_PAGE_REPORTING): the guest's driver hands the device
//! device-writable buffers that are free guest RAM (Linux reports 2 MiB and larger blocks); the
//! device gives each back to the host with MADV_DONTNEED ([`super::reclaim`]) and returns the
//! request. The guest may use the pages again at once: they fault in as zeros.
//!
//! A request with a device-readable buffer, a buffer outside guest RAM or not 4 KiB aligned
//! in address and length, or more than 128 MiB in all (Linux's largest), is refused whole (nothing given back) and counted in
//! `free_page_report_fails`. Each buffer costs one descriptor's share of the drain budget and
//! every 64 bytes given back one byte of it, so one kick gives back at most about 64 MiB
//! (plus one request: at most 128 MiB).

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::core::{each_core, serve};
use super::ledger::PAGE_SIZE;
use super::reclaim::discard_range;
use super::Balloon;
use crate::devices::virtio::buffers::Layout;
use crate::devices::virtio::chain::{self, Segment};
use crate::devices::virtio::queue::{charge_descriptors, ChainOutcome};
use crate::metrics::BalloonDeviceMetrics;
use crate::vstate::memory::GuestMemory;

impl Balloon {
    /// The reporting queue was notified: gives back every reported range, at most one queue's
    /// worth of requests per wake-up.
    pub fn process_report_queue(&mut self) {
        let Some(index) = self.core.active_roles().and_then(|r| r.report) else {
            return;
        };
        let (segments, metrics) = (&mut self.segments, &*self.metrics);
        each_core!(&mut self.core, core => serve(core, index, |mem, queue: &Queue, head| {
            let desc_table = GuestAddress(queue.desc_table());
            if let Err(e) = chain::read_chain(mem, desc_table, queue.size(), head, segments) {
                return ChainOutcome::Broken(e.into());
            }
            let reported = report(mem, segments, metrics);
            let moved = reported / REPORT_COST_DIVISOR;
            charge_descriptors(ChainOutcome::Moved { used_len: 0, moved }, segments.len())
        }))
    }
}

/// Reported bytes per byte of the drain's budget: 64 MiB of reports fill one drain, so one
/// kick zaps at most about that much (plus one request) before other events are served.
const REPORT_COST_DIVISOR: u64 = 64;
/// Most bytes one request may report: Linux's most, 32 blocks (PAGE_REPORTING_CAPACITY) of
/// 4 MiB (its largest free block). The drain's budget is checked between requests, so a
/// larger one (up to 4 GiB) would zap all of it in one go on the VMM thread.
const MAX_REPORT_BYTES: u64 = 128 << 20;

/// Checks one request and gives its ranges back; returns the bytes given back.
fn report(mem: &GuestMemory, segments: &[Segment], metrics: &BalloonDeviceMetrics) -> u64 {
    let aligned = |s: &Segment| {
        s.addr.0.is_multiple_of(PAGE_SIZE) && u64::from(s.len).is_multiple_of(PAGE_SIZE)
    };
    let good = match Layout::check(mem, segments) {
        Ok(layout) => {
            layout.readable == 0
                && u64::from(layout.writable) <= MAX_REPORT_BYTES
                && segments.iter().all(aligned)
        }
        Err(_) => false,
    };
    if !good {
        metrics.free_page_report_fails.inc();
        return 0;
    }
    metrics.free_page_report_count.inc();
    let mut freed = 0;
    for seg in segments {
        if discard_range(mem, seg.addr, u64::from(seg.len)) {
            freed += u64::from(seg.len);
        } else {
            metrics.madvise_fails.inc();
        }
    }
    metrics.free_page_report_freed.add(freed);
    freed
}
