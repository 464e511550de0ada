//! Guest RAM: private anonymous memory laid out around the 32-bit MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::arch::x86_64::layout::{FIRST_ADDR_PAST_32BITS, MMIO_GAP_START};

/// Guest memory as the VMM and its devices see it.
pub type GuestMemory = GuestMemoryMmap;

/// Errors of guest memory creation.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is zero or does not fit the address space.
    #[error("Guest memory size of {0} bytes is not valid")]
    InvalidSize(u64),
    /// mmap of a region failed.
    #[error("Cannot map a guest memory region of {size} bytes")]
    Map {
        /// Size of the region that failed.
        size: usize,
        /// Cause.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The regions overlap or are out of order.
    #[error("Cannot assemble guest memory regions")]
    Collection(#[source] vm_memory::GuestRegionCollectionError),
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

/// Creates guest RAM of `size` bytes from private anonymous mappings that reserve no swap
/// (MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE): memory of this VMM only.
pub fn create_guest_memory(size: u64) -> Result<GuestMemory, MemoryError> {
    let mut regions = Vec::new();
    for (start, len) in ram_ranges(size)? {
        let mapping = MmapRegion::build(
            None,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        )
        .map_err(|source| MemoryError::Map { size: len, source })?;
        // A region whose end overflows the address space was already refused by ram_ranges.
        let region = GuestRegionMmap::new(mapping, start).ok_or(MemoryError::InvalidSize(size))?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(MemoryError::Collection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

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
    fn guest_memory_has_the_requested_size() {
        let m = create_guest_memory(64 << 20).unwrap();
        let total: u64 = m.iter().map(|r| r.len()).sum();
        assert_eq!(total, 64 << 20);
    }
}
