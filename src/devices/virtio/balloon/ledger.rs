//! Which guest pages are in the balloon: one bit per 4 KiB page frame of guest RAM, and the
//! rules a page number from the guest must pass before the host takes the page back.
//!
//! A page frame number (PFN, virtio's 4 KiB units whatever the guest's page size) is accepted
//! into the balloon only when its whole page is guest RAM (not an MMIO hole, not past the
//! end), it is not in the balloon already, and the balloon holds fewer pages than its target.
//! It leaves the balloon only when it is in it. The bitmap spans guest physical addresses up
//! to the end of RAM, so its size is fixed by the guest's memory size at activation (32 KiB
//! per GiB), never by what the guest sends.

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, Permissions};

use crate::vstate::memory::GuestMemory;

/// The balloon's page size: virtio's PFNs are 4 KiB frames (VIRTIO_BALLOON_PFN_SHIFT).
pub const PAGE_SHIFT: u32 = 12;
/// Bytes in one balloon page.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// Why a page number was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PfnRefusal {
    /// The page is not all guest RAM (past the end, or in the MMIO gap).
    #[error("page {0:#x} is not guest RAM")]
    NotRam(u32),
    /// Inflate: the page is in the balloon already.
    #[error("page {0:#x} is in the balloon already")]
    Duplicate(u32),
    /// Inflate: the balloon holds its target already.
    #[error("page {0:#x} is past the balloon's target")]
    PastTarget(u32),
    /// Deflate: the page is not in the balloon.
    #[error("page {0:#x} is not in the balloon")]
    NotInBalloon(u32),
}

/// Why a restored bitmap is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerStateError {
    /// Another size than guest memory gives.
    #[error("the inflated page bitmap has {0} words, guest memory needs {1}")]
    Size(usize, usize),
    /// A page in the bitmap is not guest RAM.
    #[error("inflated page {0:#x} is not guest RAM")]
    NotRam(u32),
}

/// The pages in the balloon.
pub struct Ledger {
    bits: Vec<u64>,
    count: u32,
}

impl Ledger {
    /// An empty balloon over `mem`'s page frames.
    pub fn new(mem: &GuestMemory) -> Self {
        let end = mem
            .iter()
            .map(|r| r.start_addr().raw_value().saturating_add(r.len()))
            .max()
            .unwrap_or(0);
        let frames = end >> PAGE_SHIFT;
        let words = usize::try_from(frames.div_ceil(64)).unwrap_or(0);
        Self {
            bits: vec![0; words],
            count: 0,
        }
    }

    /// The number of pages in the balloon.
    pub fn count(&self) -> u32 {
        self.count
    }

    fn slot(&self, pfn: u32) -> Option<(usize, u64)> {
        let word = usize::try_from(pfn / 64).ok()?;
        (word < self.bits.len()).then_some((word, 1u64 << (pfn % 64)))
    }

    /// Puts `pfn` in the balloon when it passes the rules (see the module docs); `target` is
    /// the balloon's size in pages.
    pub fn inflate(&mut self, mem: &GuestMemory, pfn: u32, target: u32) -> Result<(), PfnRefusal> {
        let addr = GuestAddress(u64::from(pfn) << PAGE_SHIFT);
        if !vm_memory::GuestMemory::check_range(mem, addr, PAGE_SIZE as usize, Permissions::Write) {
            return Err(PfnRefusal::NotRam(pfn));
        }
        let (word, bit) = self.slot(pfn).ok_or(PfnRefusal::NotRam(pfn))?;
        if self.bits[word] & bit != 0 {
            return Err(PfnRefusal::Duplicate(pfn));
        }
        if self.count >= target {
            return Err(PfnRefusal::PastTarget(pfn));
        }
        self.bits[word] |= bit;
        self.count += 1;
        Ok(())
    }

    /// Takes `pfn` out of the balloon when it is in it.
    pub fn deflate(&mut self, pfn: u32) -> Result<(), PfnRefusal> {
        match self.slot(pfn) {
            Some((word, bit)) if self.bits[word] & bit != 0 => {
                self.bits[word] &= !bit;
                self.count -= 1;
                Ok(())
            }
            _ => Err(PfnRefusal::NotInBalloon(pfn)),
        }
    }

    /// The bitmap's size in 64-bit words.
    #[cfg(test)]
    pub fn words(&self) -> usize {
        self.bits.len()
    }

    /// The bitmap, one bit per page frame from guest physical 0 (a snapshot's copy).
    pub fn bitmap(&self) -> &[u64] {
        &self.bits
    }

    /// A balloon over `mem` holding the pages of `bits` (a restored snapshot's bitmap):
    /// refused unless the bitmap has the size a ledger over `mem` has and every page in it
    /// is guest RAM, the checks an inflate makes (the target is not: the host may have
    /// lowered it while the driver had not deflated yet).
    pub fn restored(mem: &GuestMemory, bits: &[u64]) -> Result<Self, LedgerStateError> {
        let mut ledger = Self::new(mem);
        if bits.len() != ledger.bits.len() {
            return Err(LedgerStateError::Size(bits.len(), ledger.bits.len()));
        }
        for (w, &word) in bits.iter().enumerate() {
            for b in (0..64u32).filter(|b| word & (1u64 << b) != 0) {
                // Page numbers past u32 cannot be in a balloon (virtio's PFNs are 32 bits).
                let pfn = u32::try_from(w * 64)
                    .ok()
                    .and_then(|first| first.checked_add(b))
                    .ok_or(LedgerStateError::NotRam(u32::MAX))?;
                let addr = GuestAddress(u64::from(pfn) << PAGE_SHIFT);
                if !vm_memory::GuestMemory::check_range(
                    mem,
                    addr,
                    PAGE_SIZE as usize,
                    Permissions::Write,
                ) {
                    return Err(LedgerStateError::NotRam(pfn));
                }
            }
            ledger.count += word.count_ones();
        }
        ledger.bits.copy_from_slice(bits);
        Ok(ledger)
    }

    /// The page numbers in the balloon, in order.
    #[cfg(test)]
    pub fn pfns(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, &bits)| {
            (0..64u32)
                .filter(move |b| bits & (1u64 << b) != 0)
                .map(move |b| (w as u32) * 64 + b)
        })
    }
}
