//! Dirty page tracking: the bitmaps merge and mask as KVM's log does, every way the VMM
//! writes guest memory marks the page, untracked memory has no bitmap, and a log given back
//! after a failed snapshot is in the next one (real KVM for the last).

use std::io::Write;

use vm_memory::{Bytes, GuestAddress, ReadVolatile};

use super::*;
use crate::vstate::memory::{create_guest_memory, MemoryOptions};
use crate::vstate::snapshot::test_kvm::vm_or_skip;

const MIB: u64 = 1 << 20;

fn tracked(size: u64) -> GuestMemory {
    let opts = MemoryOptions {
        track_dirty_pages: true,
        ..Default::default()
    };
    create_guest_memory(size, opts).unwrap()
}

/// The VMM's bitmap of region 0, taken (and so cleared).
fn vmm_bits(mem: &GuestMemory) -> Vec<u64> {
    region_bitmap(mem.iter().next().unwrap()).take().unwrap()
}

fn set_pages(bitmap: &[u64]) -> Vec<u64> {
    dirty_runs(bitmap, bitmap.len() as u64 * 64)
        .into_iter()
        .flat_map(|(first, count)| first..first + count)
        .collect()
}

#[test]
fn merging_ors_the_logs_and_drops_bits_past_the_last_page() {
    let mut kvm = vec![0b0101, 0];
    merge(&mut kvm, &[0b0011, 1 << 9 | 1 << 63], 74).unwrap();
    // Page 127 is past the region's 74 pages: never a page to write.
    assert_eq!(kvm, vec![0b0111, 1 << 9]);
    let mut full = vec![u64::MAX; 2];
    merge(&mut full, &[0, 0], 128).unwrap();
    assert_eq!(full, vec![u64::MAX; 2], "a whole last word is kept");
}

#[test]
fn merging_logs_of_other_sizes_is_refused() {
    let mut kvm = vec![0; 2];
    assert!(merge(&mut kvm, &[0; 3], 128).is_err());
    assert!(
        merge(&mut kvm, &[0; 2], 200).is_err(),
        "2 words cannot hold 200 pages"
    );
    assert_eq!(kvm, vec![0; 2], "a refused merge changes nothing");
}

#[test]
fn dirty_runs_cover_exactly_the_set_bits() {
    let bitmap = [0b1011_0001u64, 1 << 63];
    assert_eq!(
        dirty_runs(&bitmap, 128),
        vec![(0, 1), (4, 2), (7, 1), (127, 1)]
    );
    assert_eq!(dirty_runs(&[u64::MAX], 10), vec![(0, 10)]);
    assert_eq!(dirty_runs(&[], 10), vec![]);
}

#[test]
fn every_way_the_vmm_writes_guest_memory_marks_the_page() {
    let mem = tracked(4 * MIB);
    assert!(is_tracking(&mem));
    // Bytes (device headers, used rings through virtio-queue).
    mem.write_obj(1u32, GuestAddress(PAGE_SIZE)).unwrap();
    // A slice across a page boundary marks both pages.
    mem.write_slice(&[1u8; 8], GuestAddress(3 * PAGE_SIZE - 4))
        .unwrap();
    // An atomic store (virtio-queue's used index).
    mem.store(
        7u16,
        GuestAddress(10 * PAGE_SIZE),
        std::sync::atomic::Ordering::Release,
    )
    .unwrap();
    // A read from a file straight into guest memory (virtio-blk reads).
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&[9u8; 100]).unwrap();
    use std::io::Seek;
    file.rewind().unwrap();
    let slice = mem.get_slice(GuestAddress(20 * PAGE_SIZE), 100).unwrap();
    file.read_volatile(&mut slice.clone()).unwrap();
    // Reads mark nothing.
    let _: u64 = mem.read_obj(GuestAddress(30 * PAGE_SIZE)).unwrap();
    assert_eq!(set_pages(&vmm_bits(&mem)), vec![1, 2, 3, 10, 20]);
    assert_eq!(set_pages(&vmm_bits(&mem)), Vec::<u64>::new(), "take clears");
}

#[test]
fn untracked_memory_has_no_bitmap_and_marks_nothing() {
    let mem = create_guest_memory(2 * MIB, MemoryOptions::default()).unwrap();
    assert!(!is_tracking(&mem));
    mem.write_obj(1u64, GuestAddress(0)).unwrap();
    let region = mem.iter().next().unwrap();
    assert!(region_bitmap(region).take().is_none());
    assert!(!region_bitmap(region).dirty_at(0));
}

#[test]
fn a_log_given_back_after_a_failed_snapshot_is_in_the_next_one() {
    let test = "a_log_given_back_after_a_failed_snapshot_is_in_the_next_one";
    let Some(vm) = vm_or_skip(test) else {
        return;
    };
    let mem = tracked(4 * MIB);
    vm.register_memory(&mem).unwrap();
    DirtyLog::take(vm.fd(), &mem).unwrap();
    mem.write_obj(5u8, GuestAddress(7 * PAGE_SIZE)).unwrap();
    mem.write_obj(5u8, GuestAddress(1000 * PAGE_SIZE)).unwrap();
    let log = DirtyLog::take(vm.fd(), &mem).unwrap();
    assert_eq!(set_pages(&log.regions[0]), vec![7, 1000]);
    assert_eq!(DirtyLog::take(vm.fd(), &mem).unwrap().pages(), 0);
    log.give_back(&mem);
    mem.write_obj(5u8, GuestAddress(8 * PAGE_SIZE)).unwrap();
    let next = DirtyLog::take(vm.fd(), &mem).unwrap();
    assert_eq!(set_pages(&next.regions[0]), vec![7, 8, 1000]);
}

#[test]
fn taking_the_log_of_untracked_memory_is_refused() {
    let test = "taking_the_log_of_untracked_memory_is_refused";
    let Some(vm) = vm_or_skip(test) else {
        return;
    };
    let mem = create_guest_memory(2 * MIB, MemoryOptions::default()).unwrap();
    vm.register_memory(&mem).unwrap();
    assert!(matches!(
        DirtyLog::take(vm.fd(), &mem),
        Err(DirtyError::NotTracked(0))
    ));
}

#[test]
fn a_failed_take_keeps_the_vmm_pages_for_the_next_one() {
    let test = "a_failed_take_keeps_the_vmm_pages_for_the_next_one";
    let Some(vm) = vm_or_skip(test) else {
        return;
    };
    // Not registered with KVM: KVM_GET_DIRTY_LOG fails for slot 0.
    let mem = tracked(2 * MIB);
    mem.write_obj(5u8, GuestAddress(5 * PAGE_SIZE)).unwrap();
    assert!(matches!(
        DirtyLog::take(vm.fd(), &mem),
        Err(DirtyError::KvmLog(0, _))
    ));
    assert_eq!(set_pages(&vmm_bits(&mem)), vec![5]);
}
