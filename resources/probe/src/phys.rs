//! Reads of guest-physical memory. The probe runs identity-mapped (virtual = physical), so a
//! physical address is a pointer; callers make sure the address is mapped (boot.rs maps the
//! first 1 GiB, paging.rs the rest).

pub fn read_u8(addr: u64) -> u8 {
    // SAFETY: identity-mapped guest memory (see module docs); any byte value is valid.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

pub fn read_u16(addr: u64) -> u16 {
    // SAFETY: as read_u8; read_unaligned has no alignment requirement.
    unsafe { core::ptr::read_unaligned(addr as *const u16) }
}

pub fn read_u32(addr: u64) -> u32 {
    // SAFETY: as read_u16.
    unsafe { core::ptr::read_unaligned(addr as *const u32) }
}

pub fn read_u64(addr: u64) -> u64 {
    // SAFETY: as read_u16.
    unsafe { core::ptr::read_unaligned(addr as *const u64) }
}

/// Sum of `len` bytes from `addr`, modulo 256 (the checksum rule of BIOS tables).
pub fn byte_sum(addr: u64, len: u64) -> u8 {
    (0..len).fold(0u8, |sum, i| sum.wrapping_add(read_u8(addr + i)))
}
