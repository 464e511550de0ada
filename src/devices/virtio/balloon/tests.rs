//! The balloon against mock queues: pages really given back (the mapping's RSS drops), and
//! the hostile driver (page numbers outside RAM, in a hole, duplicated, past the target, a huge
//! count, odd lengths, the wrong direction), each refused and counted with bounded work.

#![allow(clippy::unwrap_used)]

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use vm_memory::{Bytes, GuestAddress};

use super::core::BalloonCore;
use super::ledger::Ledger;
use crate::devices::virtio::VIRTIO_F_VERSION_1;
use crate::vstate::memory::GuestMemory;

use super::*;
use crate::devices::virtio::queue::pending;
use crate::devices::virtio::{ActivateContext, VirtioDevice};
use crate::vstate::memory::create_guest_memory;

pub(super) const INFLATE_RING: u64 = 0;
pub(super) const DEFLATE_RING: u64 = 0x1_0000;
/// Where the tests put page number arrays.
pub(super) const ARRAYS: u64 = 0x2_0000;

pub(super) fn config(amount_mib: u32) -> BalloonConfig {
    BalloonConfig {
        amount_mib,
        ..BalloonConfig::default()
    }
}

pub(super) struct Rig<'a> {
    pub mem: &'a GuestMemory,
    pub inflate: MockSplitQueue<'a, GuestMemory>,
    pub deflate: MockSplitQueue<'a, GuestMemory>,
    pub balloon: Balloon,
    pub metrics: Arc<BalloonDeviceMetrics>,
}

impl<'a> Rig<'a> {
    pub fn new(mem: &'a GuestMemory, amount_mib: u32) -> Self {
        let inflate = MockSplitQueue::create(mem, GuestAddress(INFLATE_RING), 256);
        let deflate = MockSplitQueue::create(mem, GuestAddress(DEFLATE_RING), 256);
        let metrics = Arc::new(BalloonDeviceMetrics::new());
        let mut balloon = Balloon::new(&config(amount_mib), metrics.clone()).unwrap();
        balloon
            .activate(ActivateContext {
                mem: mem.clone(),
                queues: vec![
                    inflate.create_queue().unwrap(),
                    deflate.create_queue().unwrap(),
                ],
                features: VIRTIO_F_VERSION_1,
            })
            .unwrap();
        Self {
            mem,
            inflate,
            deflate,
            balloon,
            metrics,
        }
    }

    /// Writes `pfns` at `at` and returns a readable descriptor over them.
    pub fn array(&self, at: u64, pfns: &[u32]) -> RawDescriptor {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        desc(at, bytes.len() as u32, 0)
    }

    pub fn inflate_chains(&self, descs: &[RawDescriptor]) {
        self.inflate.add_desc_chains(descs, 0).unwrap();
    }
}

pub(super) fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

pub(super) fn small_memory_with_a_hole() -> GuestMemory {
    // 4 MiB of RAM, a 2 MiB hole (an MMIO gap), 2 MiB more.
    GuestMemory::from_ranges(&[
        (GuestAddress(0), 0x40_0000),
        (GuestAddress(0x60_0000), 0x20_0000),
    ])
    .unwrap()
}

/// The resident KiB of the mapping that starts at `host`, from /proc/self/smaps.
pub(super) fn mapping_rss_kib(host: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let head = format!("{host:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
    lines.next().expect("the guest RAM mapping is in smaps");
    let rss = lines.find(|l| l.starts_with("Rss:")).unwrap();
    rss.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn inflated_pages_are_returned_and_the_mappings_rss_drops_by_about_their_size() {
    let mem = create_guest_memory(64 << 20, MemoryOptions::default()).unwrap();
    let region = mem.iter().next().unwrap();
    let host = region.as_ptr() as usize;
    // The guest fills 32 MiB from 16 MiB on.
    let fill = vec![0x5au8; 1 << 20];
    for mib in 16..48u64 {
        mem.write_slice(&fill, GuestAddress(mib << 20)).unwrap();
    }
    let before = mapping_rss_kib(host);
    assert!(before >= 32 * 1024, "filled: {before} KiB resident");

    let mut rig = Rig::new(&mem, 32);
    // 8,192 pages in chains of 1,024 page numbers (4 KiB arrays).
    let first = (16u32 << 20) >> 12;
    let descs: Vec<_> = (0..8u32)
        .map(|c| {
            let pfns: Vec<u32> = (0..1024).map(|i| first + c * 1024 + i).collect();
            rig.array(ARRAYS + u64::from(c) * 4096, &pfns)
        })
        .collect();
    rig.inflate_chains(&descs);
    for _ in 0..8 {
        rig.balloon.process_queue(0);
    }
    assert_eq!(rig.inflate.used().idx().load(), 8);
    assert_eq!(rig.balloon.inflated_pages(), 8192);
    assert_eq!(rig.metrics.inflated_pages.count(), 8192);
    assert_eq!(rig.metrics.madvise_fails.count(), 0);
    let after = mapping_rss_kib(host);
    let dropped = before.saturating_sub(after);
    eprintln!("guest RAM mapping RSS: {before} KiB -> {after} KiB");
    // About 32 MiB: the margin covers the rings and arrays the test wrote meanwhile.
    assert!(
        (30 * 1024..=33 * 1024).contains(&dropped),
        "RSS {before} KiB -> {after} KiB"
    );
    // The guest may use its pages again after a deflate: they read as zeros.
    let mut byte = [1u8];
    mem.read_slice(&mut byte, GuestAddress(16 << 20)).unwrap();
    assert_eq!(byte, [0]);
}

#[test]
fn pages_given_back_are_marked_dirty_so_a_diff_snapshot_writes_their_zeros() {
    let opts = MemoryOptions {
        track_dirty_pages: true,
        ..Default::default()
    };
    let mem = create_guest_memory(64 << 20, opts).unwrap();
    let bitmap = mem.iter().next().unwrap().bitmap();
    let first = (16u32 << 20) >> 12;
    let mut rig = Rig::new(&mem, 1);
    // Two runs: pages 0..8 and 10..12 of the 16 MiB mark; 8 and 9 stay in the guest.
    let pfns: Vec<u32> = (0..8).chain(10..12).map(|i| first + i).collect();
    let desc = rig.array(ARRAYS, &pfns);
    rig.inflate_chains(&[desc]);
    rig.balloon.process_queue(0);
    assert_eq!(rig.balloon.inflated_pages(), 10);
    let dirty = |i: u32| bitmap.dirty_at(((first + i) as usize) << 12);
    for i in (0..8).chain(10..12) {
        assert!(dirty(i), "page {i} was given back but is clean");
    }
    assert!(
        !dirty(8) && !dirty(9) && !dirty(12),
        "a page kept is marked"
    );
}

#[test]
fn pages_outside_ram_and_in_a_hole_are_refused_and_counted() {
    let mem = small_memory_with_a_hole();
    let mut rig = Rig::new(&mem, 8);
    let hole = 0x50_0000u32 >> 12;
    let past_end = 0x80_0000u32 >> 12;
    let d = rig.array(ARRAYS, &[hole, past_end, u32::MAX, 0x300, 0x600]);
    rig.inflate_chains(&[d]);
    rig.balloon.process_queue(0);
    assert_eq!(rig.inflate.used().idx().load(), 1);
    assert_eq!(rig.metrics.refused_pfns.count(), 3);
    assert_eq!(rig.balloon.inflated_pages(), 2);
    let inflated: Vec<u32> = rig.balloon.ledger.as_ref().unwrap().pfns().collect();
    assert_eq!(inflated, [0x300, 0x600]);
}

#[test]
fn duplicates_and_pages_past_the_target_are_refused() {
    let mem = small_memory_with_a_hole();
    // A target of 1 MiB: 256 pages.
    let mut rig = Rig::new(&mem, 1);
    let pfns: Vec<u32> = (0x100..0x100 + 300).chain([0x100, 0x101]).collect();
    let d = rig.array(ARRAYS, &pfns);
    rig.inflate_chains(&[d]);
    rig.balloon.process_queue(0);
    assert_eq!(rig.balloon.inflated_pages(), 256);
    assert_eq!(rig.metrics.refused_pfns.count(), 44 + 2);
}

#[test]
fn deflate_takes_back_only_pages_in_the_balloon() {
    let mem = small_memory_with_a_hole();
    let mut rig = Rig::new(&mem, 1);
    let d = rig.array(ARRAYS, &[0x100, 0x101]);
    rig.inflate_chains(&[d]);
    rig.balloon.process_queue(0);
    let d = rig.array(ARRAYS + 0x1000, &[0x100, 0x100, 0x200]);
    rig.deflate.add_desc_chains(&[d], 0).unwrap();
    rig.balloon.process_queue(1);
    assert_eq!(rig.deflate.used().idx().load(), 1);
    assert_eq!(rig.balloon.inflated_pages(), 1);
    assert_eq!(rig.metrics.deflated_pages.count(), 1);
    assert_eq!(rig.metrics.refused_pfns.count(), 2);
}

#[test]
fn odd_lengths_and_device_writable_buffers_are_refused_whole() {
    let mem = small_memory_with_a_hole();
    let mut rig = Rig::new(&mem, 1);
    let good = rig.array(ARRAYS, &[0x100, 0x101]);
    let odd = desc(ARRAYS, 7, 0);
    let writable = desc(ARRAYS, 8, VRING_DESC_F_WRITE as u16);
    let zero = desc(ARRAYS, 0, 0);
    let outside = desc(0x50_0000, 8, 0);
    rig.inflate_chains(&[odd, writable, zero, outside, good]);
    rig.balloon.process_queue(0);
    assert_eq!(rig.inflate.used().idx().load(), 5);
    assert_eq!(rig.metrics.execute_fails.count(), 4);
    assert_eq!(
        rig.balloon.inflated_pages(),
        2,
        "only the good chain counts"
    );
    let BalloonCore::Two(core) = &rig.balloon.core else {
        panic!("a balloon without statistics has two queues");
    };
    assert!(!core.interrupt.needs_reset());
}

#[test]
fn a_huge_count_in_one_descriptor_is_capped_and_one_kick_does_bounded_work() {
    let mem = small_memory_with_a_hole();
    let mut rig = Rig::new(&mem, 4);
    mem.write_slice(&[0xff; 0x1_0000], GuestAddress(0x10_0000))
        .unwrap();
    // 64 KiB of page numbers (16,384 of them, none guest RAM) in each of 200 chains.
    let descs: Vec<_> = (0..200).map(|_| desc(0x10_0000, 0x1_0000, 0)).collect();
    rig.inflate_chains(&descs);
    rig.balloon.process_queue(0);
    let used = rig.inflate.used().idx().load();
    let read = u64::from(used) * MAX_PFNS_PER_CHAIN as u64;
    assert!(
        read <= 4096 + MAX_PFNS_PER_CHAIN as u64,
        "{used} chains in one kick"
    );
    let BalloonCore::Two(core) = &rig.balloon.core else {
        panic!("a balloon without statistics has two queues");
    };
    assert!(pending(&core.active.as_ref().unwrap().queues[0], &mem) > 0);
    assert_eq!(
        rig.metrics.refused_pfns.count(),
        u64::from(used) * 16384,
        "every page number is counted, the ones past the cap included"
    );
}

#[test]
fn config_space_holds_the_target_and_the_drivers_actual() {
    let mem = small_memory_with_a_hole();
    let mut rig = Rig::new(&mem, 2);
    let mut word = [0u8; 4];
    rig.balloon.read_config(0, &mut word);
    assert_eq!(u32::from_le_bytes(word), 512);
    rig.balloon.write_config(4, &100u32.to_le_bytes());
    assert_eq!(rig.balloon.actual_pages(), 100);
    rig.balloon.write_config(0, &1u32.to_le_bytes());
    assert_eq!(rig.balloon.target_pages(), 512, "num_pages is the host's");
    assert_eq!(rig.metrics.execute_fails.count(), 1);
    rig.balloon.set_target_mib(3, 8).unwrap();
    rig.balloon.read_config(0, &mut word);
    assert_eq!(u32::from_le_bytes(word), 768);
    assert!(matches!(
        rig.balloon.set_target_mib(9, 8),
        Err(BalloonError::TooMuchMemoryRequested(9))
    ));
}

#[test]
fn guest_memory_the_balloon_cannot_give_back_is_refused_by_name() {
    let locked = MemoryOptions {
        lock: true,
        ..MemoryOptions::default()
    };
    assert!(check_memory_options(&locked).is_err());
    let huge = MemoryOptions {
        backing: Backing::Huge2M,
        ..MemoryOptions::default()
    };
    assert!(check_memory_options(&huge).is_err());
    assert!(check_memory_options(&MemoryOptions::default()).is_ok());
}

#[test]
fn deflate_on_oom_is_offered_only_when_asked() {
    let metrics = Arc::new(BalloonDeviceMetrics::new());
    let plain = Balloon::new(&config(1), metrics.clone()).unwrap();
    assert_eq!(plain.avail_features() & VIRTIO_BALLOON_F_DEFLATE_ON_OOM, 0);
    let oom = BalloonConfig {
        deflate_on_oom: true,
        ..config(1)
    };
    let dev = Balloon::new(&oom, metrics).unwrap();
    assert_ne!(dev.avail_features() & VIRTIO_BALLOON_F_DEFLATE_ON_OOM, 0);
    assert_eq!(dev.device_type(), 5);
    assert_eq!(dev.queue_max_sizes().len(), 2);
}

#[test]
fn the_ledger_is_sized_by_guest_memory_whatever_the_guest_sends() {
    let mem = small_memory_with_a_hole();
    let ledger = Ledger::new(&mem);
    // 8 MiB of guest physical space: 2,048 frames, 32 words.
    assert_eq!(ledger.words(), 32);
    assert_eq!(mem.last_addr().raw_value(), 0x7f_ffff);
}

pub(super) const STATS_RING: u64 = 0x3_0000;
pub(super) const STATS_BUFFER: u64 = 0x3_8000;

/// A balloon with the statistics queue, its three mock queues.
pub(super) fn stats_rig(
    mem: &GuestMemory,
) -> (
    Balloon,
    MockSplitQueue<'_, GuestMemory>,
    Arc<BalloonDeviceMetrics>,
) {
    let inflate = MockSplitQueue::create(mem, GuestAddress(INFLATE_RING), 16);
    let deflate = MockSplitQueue::create(mem, GuestAddress(DEFLATE_RING), 16);
    let stats = MockSplitQueue::create(mem, GuestAddress(STATS_RING), 16);
    let metrics = Arc::new(BalloonDeviceMetrics::new());
    let cfg = BalloonConfig {
        stats_polling_interval_s: 1,
        ..config(1)
    };
    let mut balloon = Balloon::new(&cfg, metrics.clone()).unwrap();
    assert_ne!(balloon.avail_features() & VIRTIO_BALLOON_F_STATS_VQ, 0);
    assert_eq!(balloon.queue_max_sizes().len(), 3);
    balloon
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![
                inflate.create_queue().unwrap(),
                deflate.create_queue().unwrap(),
                stats.create_queue().unwrap(),
            ],
            features: VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_STATS_VQ,
        })
        .unwrap();
    (balloon, stats, metrics)
}

/// Writes `entries` (tag, value) at `at` and returns a readable descriptor over them.
pub(super) fn stats_buffer(mem: &GuestMemory, at: u64, entries: &[(u16, u64)]) -> RawDescriptor {
    let bytes: Vec<u8> = entries
        .iter()
        .flat_map(|(t, v)| t.to_le_bytes().into_iter().chain(v.to_le_bytes()))
        .collect();
    mem.write_slice(&bytes, GuestAddress(at)).unwrap();
    desc(at, bytes.len() as u32, 0)
}

#[test]
fn a_statistics_buffer_is_read_held_and_given_back_at_each_request() {
    let mem = small_memory_with_a_hole();
    let (mut balloon, q, metrics) = stats_rig(&mem);
    let d = stats_buffer(&mem, STATS_BUFFER, &[(4, 1000), (5, 4000), (99, 7)]);
    q.add_desc_chains(&[d], 0).unwrap();
    balloon.process_stats_queue();
    assert_eq!(q.used().idx().load(), 0, "held until the next request");
    assert_eq!(metrics.stats_updates_count.count(), 1);
    let stats = balloon.latest_stats().unwrap();
    assert_eq!(
        (stats.free_memory, stats.total_memory),
        (Some(1000), Some(4000))
    );
    assert_eq!((stats.target_pages, stats.target_mib), (256, 1));
    let json = serde_json::to_value(stats).unwrap();
    assert_eq!(json["free_memory"], 1000);
    assert!(
        json.get("swap_in").is_none(),
        "absent values are left out: {json}"
    );
    balloon.request_stats();
    assert_eq!(q.used().idx().load(), 1);
    balloon.request_stats();
    assert_eq!(q.used().idx().load(), 1, "nothing held, nothing given back");
    balloon.set_stats_interval(5).unwrap();
    assert_eq!(balloon.config().stats_polling_interval_s, 5);
    assert!(matches!(
        balloon.set_stats_interval(0),
        Err(BalloonError::StatsStateChange)
    ));
}

#[test]
fn malformed_statistics_buffers_are_given_back_at_once_and_counted() {
    let mem = small_memory_with_a_hole();
    let (mut balloon, q, metrics) = stats_rig(&mem);
    let good = stats_buffer(&mem, STATS_BUFFER, &[(4, 1)]);
    let odd = desc(STATS_BUFFER, 7, 0);
    let writable = desc(STATS_BUFFER, 10, VRING_DESC_F_WRITE as u16);
    let huge = desc(0x10_0000, 0x1_0000 - 6, 0);
    q.add_desc_chains(&[good, odd, writable, huge], 0).unwrap();
    balloon.process_stats_queue();
    assert_eq!(
        q.used().idx().load(),
        3,
        "the three refused go back, the good one is held"
    );
    assert_eq!(metrics.stats_update_fails.count(), 3);
    assert_eq!(balloon.latest_stats().unwrap().free_memory, Some(1));
    // A second good buffer replaces the held one, which goes back.
    let next = stats_buffer(&mem, STATS_BUFFER + 0x100, &[(4, 2)]);
    q.add_desc_chains(&[next], 4).unwrap();
    balloon.process_stats_queue();
    assert_eq!(q.used().idx().load(), 4);
    assert_eq!(balloon.latest_stats().unwrap().free_memory, Some(2));
}

#[test]
fn a_target_is_refused_until_the_driver_activates_the_device() {
    let metrics = Arc::new(BalloonDeviceMetrics::new());
    let mut balloon = Balloon::new(&config(1), metrics).unwrap();
    assert_eq!(
        balloon.set_target_mib(2, 8).unwrap_err().to_string(),
        "Device not activated yet."
    );
    assert_eq!(balloon.target_pages(), 256);
}

#[test]
fn a_balloon_without_statistics_refuses_statistics_requests() {
    let mem = small_memory_with_a_hole();
    let mut rig = Rig::new(&mem, 1);
    assert!(matches!(
        rig.balloon.latest_stats(),
        Err(BalloonError::StatsDisabled)
    ));
    assert!(matches!(
        rig.balloon.set_stats_interval(1),
        Err(BalloonError::StatsStateChange)
    ));
}

/// A balloon with free page reporting only (its reporting queue is queue 2).
fn reporting_rig(
    mem: &GuestMemory,
) -> (
    Balloon,
    MockSplitQueue<'_, GuestMemory>,
    Arc<BalloonDeviceMetrics>,
) {
    let inflate = MockSplitQueue::create(mem, GuestAddress(INFLATE_RING), 16);
    let deflate = MockSplitQueue::create(mem, GuestAddress(DEFLATE_RING), 16);
    let report = MockSplitQueue::create(mem, GuestAddress(STATS_RING), 16);
    let metrics = Arc::new(BalloonDeviceMetrics::new());
    let cfg = BalloonConfig {
        free_page_reporting: true,
        ..config(0)
    };
    let mut balloon = Balloon::new(&cfg, metrics.clone()).unwrap();
    assert_ne!(
        balloon.avail_features() & VIRTIO_BALLOON_F_PAGE_REPORTING,
        0
    );
    assert_eq!(balloon.avail_features() & VIRTIO_BALLOON_F_STATS_VQ, 0);
    assert_eq!(balloon.queue_max_sizes().len(), 3);
    balloon
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![
                inflate.create_queue().unwrap(),
                deflate.create_queue().unwrap(),
                report.create_queue().unwrap(),
            ],
            features: VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_PAGE_REPORTING,
        })
        .unwrap();
    (balloon, report, metrics)
}

#[test]
fn reported_free_ranges_are_given_back_and_the_mappings_rss_drops() {
    let mem = create_guest_memory(32 << 20, MemoryOptions::default()).unwrap();
    let host = mem.iter().next().unwrap().as_ptr() as usize;
    let fill = vec![0x5au8; 1 << 20];
    for mib in 16..24u64 {
        mem.write_slice(&fill, GuestAddress(mib << 20)).unwrap();
    }
    let (mut balloon, q, metrics) = reporting_rig(&mem);
    let before = mapping_rss_kib(host);
    let w = VRING_DESC_F_WRITE as u16;
    let ranges: Vec<_> = (0..4u64)
        .map(|i| desc((16 << 20) + (i << 21), 2 << 20, w))
        .collect();
    q.add_desc_chains(&ranges, 0).unwrap();
    balloon.process_report_queue();
    assert_eq!(q.used().idx().load(), 4);
    assert_eq!(metrics.free_page_report_count.count(), 4);
    assert_eq!(metrics.free_page_report_freed.count(), 8 << 20);
    let after = mapping_rss_kib(host);
    let dropped = before.saturating_sub(after);
    assert!(
        (7 * 1024..=8 * 1024).contains(&dropped),
        "RSS {before} KiB -> {after} KiB"
    );
}

#[test]
fn malformed_free_page_reports_are_refused_whole_and_counted() {
    let mem = small_memory_with_a_hole();
    let (mut balloon, q, metrics) = reporting_rig(&mem);
    let w = VRING_DESC_F_WRITE as u16;
    let readable = desc(0x10_0000, 0x1000, 0);
    let unaligned = desc(0x10_0800, 0x1000, w);
    let short = desc(0x10_0000, 0x800, w);
    let in_hole = desc(0x40_0000, 0x1000, w);
    q.add_desc_chains(&[readable, unaligned, short, in_hole], 0)
        .unwrap();
    balloon.process_report_queue();
    assert_eq!(q.used().idx().load(), 4);
    assert_eq!(metrics.free_page_report_fails.count(), 4);
    assert_eq!(metrics.free_page_report_freed.count(), 0);
    assert_eq!(metrics.madvise_fails.count(), 0);
}

#[test]
fn one_kick_gives_back_a_bounded_amount_of_reported_memory() {
    let mem = create_guest_memory(32 << 20, MemoryOptions::default()).unwrap();
    let (mut balloon, q, metrics) = reporting_rig(&mem);
    let w = VRING_DESC_F_WRITE as u16;
    // 16 requests of the 16 MiB from 16 MiB: 256 MiB reported, the budget is 64 MiB a kick.
    let reports: Vec<_> = (0..16).map(|_| desc(16 << 20, 16 << 20, w)).collect();
    q.add_desc_chains(&reports, 0).unwrap();
    balloon.process_report_queue();
    let used = u64::from(q.used().idx().load());
    assert!((1..=5).contains(&used), "{used} requests in one kick");
    assert_eq!(metrics.free_page_report_freed.count(), used * (16 << 20));
}

#[test]
fn one_report_over_more_than_linux_ever_reports_is_refused_whole() {
    use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
    let mem = create_guest_memory(512 << 20, MemoryOptions::default()).unwrap();
    let (mut balloon, q, metrics) = reporting_rig(&mem);
    // The attack: ONE request of 15 buffers of 32 MiB (480 MiB; a guest with more RAM reports
    // up to 4 GiB in one request). The drain's budget is checked between requests, so the
    // VMM thread would zap all of it in one go (about 34 ms per populated GiB here). Linux
    // reports at most 32 blocks of 4 MiB (128 MiB) per request.
    let (n, w) = (15u16, (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16);
    let chain: Vec<RawDescriptor> = (1..=n)
        .map(|i| {
            let flags = if i == n { VRING_DESC_F_WRITE as u16 } else { w };
            RawDescriptor::from(Descriptor::new(u64::from(i) << 25, 32 << 20, flags, i))
        })
        .collect();
    q.add_desc_chains(&chain, 0).unwrap();
    balloon.process_report_queue();
    assert_eq!(q.used().idx().load(), 1, "the request is answered");
    assert_eq!(metrics.free_page_report_freed.count(), 0);
    assert_eq!(metrics.free_page_report_fails.count(), 1);
    // A request of 128 MiB, Linux's largest (here 16 buffers of 8 MiB: the mock queue has 16
    // descriptors), is given back whole.
    let mem = create_guest_memory(256 << 20, MemoryOptions::default()).unwrap();
    let (mut balloon, q, metrics) = reporting_rig(&mem);
    let n = 16u16;
    let chain: Vec<RawDescriptor> = (0..n)
        .map(|i| {
            let flags = if i == n - 1 {
                VRING_DESC_F_WRITE as u16
            } else {
                w
            };
            let addr = (64 << 20) + (u64::from(i) << 23);
            RawDescriptor::from(Descriptor::new(addr, 8 << 20, flags, i + 1))
        })
        .collect();
    q.add_desc_chains(&chain, 0).unwrap();
    balloon.process_report_queue();
    assert_eq!(q.used().idx().load(), 1);
    assert_eq!(metrics.free_page_report_freed.count(), 128 << 20);
    assert_eq!(metrics.free_page_report_fails.count(), 0);
}

#[test]
fn a_target_fits_up_to_the_whole_of_guest_memory() {
    let config = |amount_mib| BalloonConfig {
        amount_mib,
        ..Default::default()
    };
    assert!(config(128).check_fits(128).is_ok());
    assert!(matches!(
        config(129).check_fits(128),
        Err(BalloonError::TooLarge)
    ));
    assert!(config(u32::MAX).check_fits(usize::MAX).is_ok());
}
