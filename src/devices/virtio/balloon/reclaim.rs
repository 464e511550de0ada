//! Giving the pages of an inflated balloon back to the host: madvise(MADV_DONTNEED) on the
//! VMM's mapping of each run of contiguous pages.
//!
//! Guest RAM is always a private mapping here (anonymous, or a private copy-on-write view of
//! a snapshot's memory file: `crate::vstate::memory`), so MADV_DONTNEED frees the page
//! (anonymous: the next touch reads zeros; file: it reads the file's page again) and the VMM's
//! RSS drops by it. MADV_REMOVE is never needed. Locked memory (mlock2) refuses
//! MADV_DONTNEED and explicit 2 MiB pages cannot give back 4 KiB, so the balloon refuses
//! both memory options at creation ([`super::check_memory_options`]). A run is madvised only
//! when every page of it was checked to be guest RAM and the run lies inside one region of the
//! mapping: never an address outside guest RAM.
//!
//! A range given back is marked dirty (`crate::vstate::dirty`) when dirty pages are tracked:
//! KVM's log never sees MADV_DONTNEED, so without the mark a Diff snapshot would leave the
//! range's old contents in the memory file it writes onto (data the guest gave back would
//! stay on disk). Marked, the Diff writes what the range reads now: zeros.

use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::ledger::{PAGE_SHIFT, PAGE_SIZE};
use crate::vstate::memory::GuestMemory;

/// Contiguous page numbers waiting for one madvise call.
#[derive(Default)]
pub struct Runs {
    start: u32,
    len: u32,
}

impl Runs {
    /// Adds `pfn`; when it does not continue the current run, that run is given back first.
    /// Returns the number of failed madvise calls.
    pub fn push(&mut self, mem: &GuestMemory, pfn: u32) -> u64 {
        if self.len > 0 && self.start.checked_add(self.len) == Some(pfn) {
            self.len += 1;
            return 0;
        }
        let fails = self.flush(mem);
        self.start = pfn;
        self.len = 1;
        fails
    }

    /// Gives the current run back; returns the number of failed madvise calls.
    pub fn flush(&mut self, mem: &GuestMemory) -> u64 {
        let (start, len) = (self.start, self.len);
        self.len = 0;
        if len == 0 {
            return 0;
        }
        let addr = GuestAddress(u64::from(start) << PAGE_SHIFT);
        let bytes = u64::from(len) * PAGE_SIZE;
        if discard_range(mem, addr, bytes) {
            return 0;
        }
        // The run crosses regions (adjacent in guest physical space): one page at a time.
        (0..u64::from(len))
            .filter(|i| !discard_range(mem, addr.unchecked_add(i * PAGE_SIZE), PAGE_SIZE))
            .count() as u64
    }
}

/// madvise(MADV_DONTNEED) on guest `[addr, addr + len)` when it lies in one region, then marks
/// the range dirty (the next Diff snapshot writes its zeros); false when it does not lie in
/// one region or the call failed.
pub fn discard_range(mem: &GuestMemory, addr: GuestAddress, len: u64) -> bool {
    let Some(region) = mem.find_region(addr) else {
        return false;
    };
    let offset = addr.unchecked_offset_from(region.start_addr());
    if offset.checked_add(len).is_none_or(|end| end > region.len()) {
        return false;
    }
    let (Ok(offset), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) else {
        return false;
    };
    // Pointer arithmetic without unsafe: the offset was checked against the region above.
    let start = region.as_ptr().wrapping_add(offset).cast::<libc::c_void>();
    // SAFETY: `[start, start + len)` lies inside the region's mapping (checked above), which
    // lives as long as the process (`crate::vstate::memory`). MADV_DONTNEED on a private
    // mapping only drops page contents the guest gave up; no Rust reference points into guest
    // RAM (it is accessed through volatile slices only), so no reference is invalidated.
    let ret = unsafe { libc::madvise(start, len, libc::MADV_DONTNEED) };
    if ret != 0 {
        return false;
    }
    // A no-op when dirty pages are not tracked (the region's bitmap is `None`).
    region.bitmap().mark_dirty(offset, len);
    true
}
