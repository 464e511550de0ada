//! A split virtqueue from the driver's side, polled.

use core::sync::atomic::{fence, Ordering};

use super::dma::QueueArea;
use super::{tsc, QueueSetup, TIMEOUT_TSC};

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;

pub struct Virtqueue {
    pub setup: QueueSetup,
    avail_idx: u16,
    last_used: u16,
}

fn write16(addr: u64, value: u16) {
    // SAFETY: queue rings lie in the DMA window (identity-mapped RAM); volatile because the
    // device reads them concurrently.
    unsafe { core::ptr::write_volatile(addr as *mut u16, value) };
}

fn read16(addr: u64) -> u16 {
    // SAFETY: as write16; the device writes the used ring concurrently.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}

fn read32(addr: u64) -> u32 {
    // SAFETY: as read16.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

impl Virtqueue {
    /// An empty queue of `size` entries in `area` (zeroed). Reset the device first when it may
    /// be live: zeroing its rings moves avail.idx back under it, a broken queue it enters
    /// needs-reset for (and counts) if a late notification makes it look before the reset.
    pub fn new(area: &QueueArea, size: u16) -> Self {
        super::dma::zero(area.desc, 0x3000);
        Self {
            setup: QueueSetup { size, desc: area.desc, avail: area.avail, used: area.used },
            avail_idx: 0,
            last_used: 0,
        }
    }

    pub fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let entry = self.setup.desc + u64::from(index) * 16;
        super::dma::write_u64(entry, addr);
        super::dma::write_u32(entry + 8, len);
        write16(entry + 12, flags);
        write16(entry + 14, next);
    }

    /// Puts `head` in the available ring and publishes it (the caller notifies).
    pub fn push(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.setup.size);
        write16(self.setup.avail + 4 + slot * 2, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.publish(self.avail_idx);
    }

    /// The avail.idx the next `push` publishes minus one: what the device has been given.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Writes avail.idx as given, hostile values included.
    pub fn publish(&self, idx: u16) {
        fence(Ordering::SeqCst);
        write16(self.setup.avail + 2, idx);
        fence(Ordering::SeqCst);
    }

    /// Puts a raw value in the next available slot without publishing it.
    pub fn set_avail_slot(&self, head: u16) {
        let slot = u64::from(self.avail_idx % self.setup.size);
        write16(self.setup.avail + 4 + slot * 2, head);
    }

    pub fn used_idx(&self) -> u16 {
        read16(self.setup.used + 2)
    }

    /// The next used element, if the device has put one there (no waiting).
    pub fn try_used(&mut self) -> Option<(u32, u32)> {
        if self.used_idx() == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = u64::from(self.last_used % self.setup.size);
        let elem = self.setup.used + 4 + slot * 8;
        self.last_used = self.last_used.wrapping_add(1);
        Some((read32(elem), read32(elem + 4)))
    }

    /// Waits for the next used element: (id, len); None after the timeout or when `give_up`
    /// says so (checked now and then, e.g. the device asking for a reset).
    pub fn wait_used(&mut self, mut give_up: impl FnMut() -> bool) -> Option<(u32, u32)> {
        let start = tsc();
        let mut spins = 0u32;
        while self.used_idx() == self.last_used {
            spins = spins.wrapping_add(1);
            if spins % 4096 == 0 && (tsc().wrapping_sub(start) > TIMEOUT_TSC || give_up()) {
                return None;
            }
            core::hint::spin_loop();
        }
        fence(Ordering::SeqCst);
        let slot = u64::from(self.last_used % self.setup.size);
        let elem = self.setup.used + 4 + slot * 8;
        self.last_used = self.last_used.wrapping_add(1);
        Some((read32(elem), read32(elem + 4)))
    }
}
