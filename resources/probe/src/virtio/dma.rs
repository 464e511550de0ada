//! Guest RAM the probe lends to its devices: queue rings, request headers and data buffers,
//! in a fixed window of identity-mapped RAM (boot.rs maps the first 1 GiB) above the image.
//!
//! ```text
//! 0x0080_0000  16 KiB per device (by its position on the command line): descriptor table,
//!              available ring, used ring, then a page for request headers and status bytes
//! 0x0090_0000  data buffers, up to 4 MiB
//! ```

use crate::zero_page::BootInfo;

const QUEUES_START: u64 = 0x80_0000;
const QUEUE_AREA: u64 = 0x4000;
pub const DATA_START: u64 = 0x90_0000;
pub const DATA_MAX: u64 = 0x40_0000;
const DMA_END: u64 = DATA_START + DATA_MAX;

/// The rings and the request page of device `index`.
pub struct QueueArea {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub request: u64,
}

pub fn queue_area(index: usize) -> QueueArea {
    let base = QUEUES_START + index as u64 * QUEUE_AREA;
    QueueArea { desc: base, avail: base + 0x1000, used: base + 0x2000, request: base + 0x3000 }
}

/// Whether the window is usable RAM (the VM has at least 16 MiB).
pub fn available(boot: &BootInfo) -> bool {
    boot.e820.is_usable(QUEUES_START, DMA_END)
}

pub fn zero(addr: u64, len: u64) {
    // SAFETY: [addr, addr + len) lies in the DMA window, identity-mapped RAM no other part of
    // the probe uses.
    unsafe { core::ptr::write_bytes(addr as *mut u8, 0, len as usize) };
}

pub fn write_bytes(addr: u64, bytes: &[u8]) {
    // SAFETY: as zero; the source is a distinct Rust slice.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
}

pub fn write_u64(addr: u64, value: u64) {
    write_bytes(addr, &value.to_le_bytes());
}

pub fn write_u32(addr: u64, value: u32) {
    write_bytes(addr, &value.to_le_bytes());
}

pub fn write_u8(addr: u64, value: u8) {
    // SAFETY: as zero; volatile because the device reads and writes this memory.
    unsafe { core::ptr::write_volatile(addr as *mut u8, value) };
}

pub fn read_u8(addr: u64) -> u8 {
    // SAFETY: as write_u8.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// The `len` bytes at `addr`, which the device has finished writing.
pub fn slice(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: the window is identity-mapped RAM; the device wrote it before it put the chain
    // in the used ring, which the caller has seen, and nothing writes it while it is read.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}
