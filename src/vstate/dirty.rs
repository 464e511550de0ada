//! Dirty page tracking for Diff snapshots (`track_dirty_pages`). Two sources, one bit per
//! 4 KiB page each, merged at snapshot time:
//! - KVM's dirty log: pages the guest's vCPUs wrote, kept by KVM for every memory slot
//!   registered with KVM_MEM_LOG_DIRTY_PAGES, read and cleared by KVM_GET_DIRTY_LOG;
//! - the VMM's own bitmap ([`DirtyPages`], vm-memory's `AtomicBitmap` inside each region):
//!   pages the VMM itself wrote into guest memory (the kernel and boot data at boot, virtio
//!   used rings, block reads, rng and vsock buffers). KVM never sees those writes. Every such
//!   write goes through vm-memory (`Bytes`, volatile slices, `ReadVolatile`), which marks the
//!   region's bitmap.
//!
//! Without tracking a region's bitmap is `None`: a write costs one untaken branch, and KVM
//! keeps no log. A snapshot takes both logs ([`DirtyLog::take`], which clears them); if the
//! snapshot then fails, [`DirtyLog::give_back`] marks the taken pages dirty again in the
//! VMM's bitmap, so the next Diff still holds them.

use std::num::NonZeroUsize;

use kvm_ioctls::VmFd;
use vm_memory::bitmap::{AtomicBitmap, Bitmap, NewBitmap, RefSlice, WithBitmapSlice};
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::memory::GuestMemory;

/// Granularity of both logs.
pub const PAGE_SIZE: u64 = 4096;

const PAGE: NonZeroUsize = match NonZeroUsize::new(PAGE_SIZE as usize) {
    Some(p) => p,
    None => panic!("page size is not zero"),
};

/// Errors of dirty page tracking.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    /// Guest memory was created without dirty page tracking.
    #[error("Guest memory region {0} is not tracked for dirty pages")]
    NotTracked(usize),
    /// KVM_GET_DIRTY_LOG failed.
    #[error("Cannot read KVM's dirty page log of memory slot {0}")]
    KvmLog(u32, #[source] kvm_ioctls::Error),
    /// A bitmap does not have one bit per page of its region.
    #[error("The dirty bitmap of region {0} does not match the region's size")]
    Size(usize),
}

/// The VMM's record of the pages it wrote into one region of guest memory: `None` when
/// dirty pages are not tracked (the default: vm-memory creates untracked regions).
#[derive(Debug, Default)]
pub struct DirtyPages(Option<AtomicBitmap>);

impl DirtyPages {
    /// A bitmap for a tracked region of `len` bytes, all pages clean.
    pub fn tracking(len: usize) -> Self {
        Self(Some(AtomicBitmap::new(len, PAGE)))
    }

    /// Whether the region is tracked.
    pub fn is_tracking(&self) -> bool {
        self.0.is_some()
    }

    /// The pages marked so far (one bit each, 64 per word), all cleared; `None` untracked.
    fn take(&self) -> Option<Vec<u64>> {
        self.0.as_ref().map(AtomicBitmap::get_and_reset)
    }
}

impl<'a> WithBitmapSlice<'a> for DirtyPages {
    type S = Option<RefSlice<'a, AtomicBitmap>>;
}

impl Bitmap for DirtyPages {
    fn mark_dirty(&self, offset: usize, len: usize) {
        if let Some(bitmap) = &self.0 {
            bitmap.mark_dirty(offset, len);
        }
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.0.as_ref().is_some_and(|b| b.dirty_at(offset))
    }

    fn slice_at(&self, offset: usize) -> <Self as WithBitmapSlice<'_>>::S {
        self.0.as_ref().map(|b| b.slice_at(offset))
    }
}

impl NewBitmap for DirtyPages {
    /// Regions vm-memory creates itself (tests) are not tracked.
    fn with_len(_len: usize) -> Self {
        Self(None)
    }
}

/// The VMM's bitmap of a region.
fn region_bitmap(region: &<GuestMemory as GuestMemoryBackend>::R) -> &DirtyPages {
    let mapping: &MmapRegion<DirtyPages> = region;
    mapping.bitmap()
}

/// Whether guest memory is tracked for dirty pages (all regions are, or none).
pub fn is_tracking(mem: &GuestMemory) -> bool {
    mem.iter().all(|r| region_bitmap(r).is_tracking()) && mem.num_regions() > 0
}

/// Words of a bitmap with one bit per page of `len` bytes.
fn words_for(len: u64) -> usize {
    len.div_ceil(PAGE_SIZE).div_ceil(64) as usize
}

/// ORs `other` into `into`, word by word; both must have the same number of words (one bit
/// per page of the same region). Bits past the region's last page are cleared, so a bad bit
/// from KVM or a bitmap never names a page outside guest memory.
pub fn merge(into: &mut [u64], other: &[u64], pages: u64) -> Result<(), usize> {
    if into.len() != other.len() || into.len() != pages.div_ceil(64) as usize {
        return Err(into.len());
    }
    for (w, o) in into.iter_mut().zip(other) {
        *w |= o;
    }
    let tail = pages % 64;
    if let (Some(last), true) = (into.last_mut(), tail != 0) {
        *last &= (1u64 << tail) - 1;
    }
    Ok(())
}

/// (first page, page count) of each run of set bits among the first `pages` bits.
pub fn dirty_runs(bitmap: &[u64], pages: u64) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let mut start = None;
    for page in 0..pages {
        let word = bitmap.get((page / 64) as usize).copied().unwrap_or(0);
        let dirty = word >> (page % 64) & 1 == 1;
        match (dirty, start) {
            (true, None) => start = Some(page),
            (false, Some(s)) => {
                runs.push((s, page - s));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, pages - s));
    }
    runs
}

/// KVM's log of `slot` (`len` bytes), read and cleared, with the VMM's bitmap `vmm` of the
/// same region merged in.
fn take_kvm_log(vm: &VmFd, slot: usize, len: u64, vmm: Vec<u64>) -> Result<Vec<u64>, DirtyError> {
    let bytes = usize::try_from(len).map_err(|_| DirtyError::Size(slot))?;
    let mut kvm = vm
        .get_dirty_log(slot as u32, bytes)
        .map_err(|e| DirtyError::KvmLog(slot as u32, e))?;
    if kvm.len() != words_for(len) {
        return Err(DirtyError::Size(slot));
    }
    merge(&mut kvm, &vmm, len.div_ceil(PAGE_SIZE)).map_err(|_| DirtyError::Size(slot))?;
    Ok(kvm)
}

/// The pages written since the last take, per region (slot n = region n): KVM's log and the
/// VMM's bitmap merged.
#[derive(Debug, PartialEq, Eq)]
pub struct DirtyLog {
    /// One bitmap per region.
    pub regions: Vec<Vec<u64>>,
}

impl DirtyLog {
    /// Reads and clears KVM's dirty log of every slot and the VMM's bitmap of every region.
    /// Guest memory must be tracked. The VM should be paused (a page written while this runs
    /// lands in this log or in the next one, never in neither).
    pub fn take(vm: &VmFd, mem: &GuestMemory) -> Result<Self, DirtyError> {
        let mut log = Self {
            regions: Vec::with_capacity(mem.num_regions()),
        };
        for (slot, region) in mem.iter().enumerate() {
            let vmm = region_bitmap(region)
                .take()
                .ok_or(DirtyError::NotTracked(slot));
            let merged = vmm.and_then(|vmm| {
                let taken = take_kvm_log(vm, slot, region.len(), vmm.clone());
                // A failure keeps the VMM's pages of this region for the next snapshot.
                if taken.is_err() {
                    log.regions.push(vmm);
                }
                taken
            });
            match merged {
                Ok(bitmap) => log.regions.push(bitmap),
                Err(e) => {
                    // Nothing taken is lost: the regions done so far go back as well.
                    log.give_back(mem);
                    return Err(e);
                }
            }
        }
        Ok(log)
    }

    /// Marks every page of this log dirty again in the VMM's bitmaps (after a failed
    /// snapshot: the next one must still hold them).
    pub fn give_back(&self, mem: &GuestMemory) {
        for (region, bitmap) in mem.iter().zip(&self.regions) {
            let vmm = region_bitmap(region);
            for (first, count) in dirty_runs(bitmap, region.len().div_ceil(PAGE_SIZE)) {
                vmm.mark_dirty((first * PAGE_SIZE) as usize, (count * PAGE_SIZE) as usize);
            }
        }
    }

    /// Pages in the log.
    pub fn pages(&self) -> u64 {
        self.regions
            .iter()
            .flatten()
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }
}

#[cfg(test)]
mod tests;
