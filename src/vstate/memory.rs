//! Guest RAM: private anonymous memory of this VMM only, laid out around the 32-bit MMIO
//! gap, each region between PROT_NONE guard pages, never dumped, never merged with another
//! process's pages by KSM, never inherited by a child; optionally locked (never swapped) and
//! backed by 2 MiB pages. A snapshot restore maps a memory file instead (private,
//! copy-on-write: pages fault in from the file on first touch) with the same guards and
//! hardening. With dirty page tracking each region carries the VMM's dirty bitmap
//! (`super::dirty`). All raw pointer work on guest RAM lives in this file.

use std::fs::File;
use std::os::fd::AsRawFd;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::dirty::DirtyPages;
use crate::arch::x86_64::layout::{FIRST_ADDR_PAST_32BITS, MMIO_GAP_START};

/// Guest memory as the VMM and its devices see it: every write through it marks the region's
/// dirty bitmap when dirty pages are tracked (one untaken branch when they are not).
pub type GuestMemory = GuestMemoryMmap<DirtyPages>;

const PAGE_SIZE: usize = 4096;
const HUGE_PAGE_SIZE: usize = 2 << 20;

/// How guest RAM is backed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backing {
    /// 4 KiB pages.
    #[default]
    Normal,
    /// 4 KiB pages with transparent huge pages asked for (MADV_HUGEPAGE).
    Transparent,
    /// Explicit 2 MiB huge pages (MAP_HUGETLB), from the host's hugetlb pool.
    Huge2M,
}

/// Options of guest RAM.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryOptions {
    /// Page backing.
    pub backing: Backing,
    /// Lock pages in RAM as the guest touches them (mlock2 MLOCK_ONFAULT): never swapped.
    pub lock: bool,
    /// Track dirty pages (`track_dirty_pages`): each region gets the VMM's dirty bitmap, and
    /// the caller registers it with KVM_MEM_LOG_DIRTY_PAGES.
    pub track_dirty_pages: bool,
}

/// Errors of guest memory creation.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is zero or does not fit the address space.
    #[error("Guest memory size of {0} bytes is not valid")]
    InvalidSize(u64),
    /// A mmap, madvise or mlock call failed.
    #[error("Cannot {what} guest memory ({size} bytes)")]
    Syscall {
        /// What failed.
        what: &'static str,
        /// Size of the region.
        size: usize,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// vm-memory refused the mapping.
    #[error("Cannot wrap a guest memory region")]
    Region(#[source] vm_memory::mmap::MmapRegionError),
    /// The regions overlap or are out of order.
    #[error("Cannot assemble guest memory regions")]
    Collection(#[source] vm_memory::GuestRegionCollectionError),
    /// Explicit huge pages cannot back a private file mapping.
    #[error("Guest memory restored from a file cannot use 2 MiB huge pages")]
    HugePagesFromFile,
}

/// Where the pages of a region come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Zeroed anonymous memory.
    Anonymous,
    /// A private copy-on-write view of `file` from `offset`.
    File(&'a File, u64),
}

/// The (start, size) ranges of guest RAM for `size` bytes: low RAM up to the MMIO gap,
/// the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Result<Vec<(GuestAddress, usize)>, MemoryError> {
    if size == 0 {
        return Err(MemoryError::InvalidSize(size));
    }
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), to_usize(low)?)];
    if size > MMIO_GAP_START {
        let high = size - MMIO_GAP_START;
        FIRST_ADDR_PAST_32BITS
            .checked_add(high)
            .ok_or(MemoryError::InvalidSize(size))?;
        ranges.push((GuestAddress(FIRST_ADDR_PAST_32BITS), to_usize(high)?));
    }
    Ok(ranges)
}

fn to_usize(v: u64) -> Result<usize, MemoryError> {
    usize::try_from(v).map_err(|_| MemoryError::InvalidSize(v))
}

fn last_error(what: &'static str, size: usize) -> MemoryError {
    MemoryError::Syscall {
        what,
        size,
        source: std::io::Error::last_os_error(),
    }
}

/// Maps `len` bytes of private anonymous RW memory between two PROT_NONE guard areas of one
/// page (one huge page with Huge2M) each, and applies the hardening advice. The mapping lives
/// as long as the process: guest RAM is never unmapped while the VM may run.
#[cfg(test)]
fn map_guarded(len: usize, opts: MemoryOptions) -> Result<*mut u8, MemoryError> {
    map_guarded_from(len, opts, Source::Anonymous)
}

/// As `map_guarded`, the pages coming from `source`.
fn map_guarded_from(
    len: usize,
    opts: MemoryOptions,
    source: Source<'_>,
) -> Result<*mut u8, MemoryError> {
    let align = match opts.backing {
        Backing::Huge2M => HUGE_PAGE_SIZE,
        _ => PAGE_SIZE,
    };
    if !len.is_multiple_of(align) {
        return Err(MemoryError::InvalidSize(len as u64));
    }
    // Guard, region and guard, plus slack to align the region.
    let total = len
        .checked_add(3 * align)
        .ok_or(MemoryError::InvalidSize(len as u64))?;
    // SAFETY: a fresh anonymous PROT_NONE reservation; no existing memory is touched.
    let reserve = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if reserve == libc::MAP_FAILED {
        return Err(last_error("reserve", len));
    }
    let base = reserve as usize;
    let start = (base + align).next_multiple_of(align);
    let mut flags = libc::MAP_PRIVATE | libc::MAP_NORESERVE | libc::MAP_FIXED;
    let (fd, offset) = match source {
        Source::Anonymous => {
            flags |= libc::MAP_ANONYMOUS;
            (-1, 0)
        }
        Source::File(file, offset) => (
            file.as_raw_fd(),
            libc::off_t::try_from(offset).map_err(|_| MemoryError::InvalidSize(offset))?,
        ),
    };
    if opts.backing == Backing::Huge2M {
        flags |= libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;
    }
    // SAFETY: [start, start + len) lies inside our own reservation (start >= base + align and
    // start + len + align <= base + total), so MAP_FIXED replaces only memory we own. A file
    // mapping is private: guest writes never reach the file.
    let region = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            offset,
        )
    };
    if region == libc::MAP_FAILED {
        let err = last_error("map", len);
        // SAFETY: unmapping the reservation made above, which nothing else uses.
        unsafe { libc::munmap(reserve, total) };
        return Err(err);
    }
    advise(region, len, opts)?;
    Ok(region.cast())
}

fn advise(region: *mut libc::c_void, len: usize, opts: MemoryOptions) -> Result<(), MemoryError> {
    let required = [
        (libc::MADV_DONTDUMP, "exclude from core dumps"),
        (libc::MADV_DONTFORK, "keep from children"),
    ];
    for (advice, what) in required {
        // SAFETY: madvise on the region we just mapped; it changes no memory contents.
        if unsafe { libc::madvise(region, len, advice) } != 0 {
            return Err(last_error(what, len));
        }
    }
    // SAFETY: as above. EINVAL means the host kernel has no KSM: nothing can merge pages.
    if unsafe { libc::madvise(region, len, libc::MADV_UNMERGEABLE) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(MemoryError::Syscall {
                what: "exclude from KSM",
                size: len,
                source: err,
            });
        }
        log::debug!("The host has no KSM; guest memory cannot be merged");
    }
    if opts.backing == Backing::Transparent {
        // SAFETY: as above.
        if unsafe { libc::madvise(region, len, libc::MADV_HUGEPAGE) } != 0 {
            return Err(last_error("ask transparent huge pages for", len));
        }
    }
    if opts.lock {
        // SAFETY: mlock2 only pins pages of our own mapping; MLOCK_ONFAULT locks them as the
        // guest touches them instead of populating all of RAM now.
        let ret = unsafe { libc::syscall(libc::SYS_mlock2, region, len, libc::MLOCK_ONFAULT) };
        if ret != 0 {
            return Err(last_error("lock (mlock2; check RLIMIT_MEMLOCK)", len));
        }
    }
    Ok(())
}

/// Creates guest RAM of `size` bytes.
pub fn create_guest_memory(size: u64, opts: MemoryOptions) -> Result<GuestMemory, MemoryError> {
    build_guest_memory(size, opts, None)
}

/// Creates guest RAM of `size` bytes as a private copy-on-write mapping of `file`, whose
/// regions lie in it one after the other (low RAM at offset 0, then RAM above 4 GiB). Nothing
/// is read now: pages fault in from the file when first touched, and guest writes stay in
/// this process. The caller checks that the file holds `size` bytes; 2 MiB huge pages cannot
/// back a file mapping.
pub fn create_guest_memory_from_file(
    file: &File,
    size: u64,
    opts: MemoryOptions,
) -> Result<GuestMemory, MemoryError> {
    if opts.backing == Backing::Huge2M {
        return Err(MemoryError::HugePagesFromFile);
    }
    build_guest_memory(size, opts, Some(file))
}

fn build_guest_memory(
    size: u64,
    opts: MemoryOptions,
    file: Option<&File>,
) -> Result<GuestMemory, MemoryError> {
    let mut regions = Vec::new();
    let mut file_offset = 0u64;
    for (start, len) in ram_ranges(size)? {
        let source = match file {
            Some(f) => Source::File(f, file_offset),
            None => Source::Anonymous,
        };
        file_offset += len as u64;
        let host = map_guarded_from(len, opts, source)?;
        let mut flags = libc::MAP_PRIVATE | libc::MAP_NORESERVE;
        if file.is_none() {
            flags |= libc::MAP_ANONYMOUS;
        }
        if opts.backing == Backing::Huge2M {
            flags |= libc::MAP_HUGETLB;
        }
        let bitmap = if opts.track_dirty_pages {
            DirtyPages::tracking(len)
        } else {
            DirtyPages::default()
        };
        // SAFETY: `host` maps `len` readable and writable bytes that stay mapped for the life
        // of the process (map_guarded never unmaps them) and that nothing else uses.
        let builder =
            unsafe { MmapRegionBuilder::new_with_bitmap(len, bitmap).with_raw_mmap_pointer(host) };
        let mapping = builder
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .build()
            .map_err(MemoryError::Region)?;
        let region = GuestRegionMmap::new(mapping, start).ok_or(MemoryError::InvalidSize(size))?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(MemoryError::Collection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn small_memory_is_one_low_region() {
        let r = ram_ranges(256 << 20).unwrap();
        assert_eq!(r, vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn memory_past_the_gap_continues_above_4g() {
        let r = ram_ranges(4 << 30).unwrap();
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1], (GuestAddress(1 << 32), (1 << 30) as usize));
    }

    #[test]
    fn zero_size_is_refused() {
        assert!(matches!(ram_ranges(0), Err(MemoryError::InvalidSize(0))));
    }

    #[test]
    fn guest_memory_has_the_requested_size_and_works() {
        let m = create_guest_memory(64 << 20, MemoryOptions::default()).unwrap();
        let total: u64 = m.iter().map(|r| r.len()).sum();
        assert_eq!(total, 64 << 20);
        m.write_obj(0xdead_beef_u64, GuestAddress((64 << 20) - 8))
            .unwrap();
        assert_eq!(
            m.read_obj::<u64>(GuestAddress((64 << 20) - 8)).unwrap(),
            0xdead_beef
        );
    }

    fn maps_line_of(addr: usize) -> Vec<String> {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .map(str::to_string)
            .filter(|l| {
                let (range, _) = l.split_once(' ').unwrap();
                let (a, b) = range.split_once('-').unwrap();
                let (a, b) = (
                    usize::from_str_radix(a, 16).unwrap(),
                    usize::from_str_radix(b, 16).unwrap(),
                );
                a <= addr && addr < b
            })
            .collect()
    }

    #[test]
    fn regions_sit_between_inaccessible_guard_pages() {
        let host = map_guarded(16 << 20, MemoryOptions::default()).unwrap() as usize;
        let before = maps_line_of(host - 1);
        let after = maps_line_of(host + (16 << 20));
        assert!(before[0].contains(" ---p "), "{before:?}");
        assert!(after[0].contains(" ---p "), "{after:?}");
        assert!(maps_line_of(host)[0].contains(" rw-p "));
    }

    #[test]
    fn unaligned_huge_page_regions_are_refused() {
        let opts = MemoryOptions {
            backing: Backing::Huge2M,
            ..Default::default()
        };
        assert!(matches!(
            map_guarded(3 << 20, opts),
            Err(MemoryError::InvalidSize(_))
        ));
    }
}
