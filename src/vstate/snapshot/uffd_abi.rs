//! The Linux userfaultfd ABI (include/uapi/linux/userfaultfd.h) that the Uffd memory backend
//! and the test handler (resources/uffd-handler) use: the ioctl numbers, the argument structs
//! and the 32-byte event message, with the layout asserted at compile time. Only the calls are
//! here; what the VMM does with them is `uffd.rs`.

use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iowr_nr};

/// The ioctl type of userfaultfd and of /dev/userfaultfd.
const UFFDIO: u32 = 0xAA;
/// The API version UFFDIO_API must be asked for.
pub const UFFD_API: u64 = 0xAA;
/// UFFDIO_REGISTER: report faults on missing pages.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// Feature: report MADV_DONTNEED/MADV_REMOVE of registered memory (Firecracker asks for it).
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// Event: a page fault on a registered missing page.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// Event: a registered range was removed (MADV_DONTNEED/MADV_REMOVE).
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
/// Event: a registered range was unmapped.
pub const UFFD_EVENT_UNMAP: u8 = 0x16;
/// `uffdio_copy.mode`/`uffdio_zeropage.mode`: do not wake the faulting thread.
pub const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioApi {
    /// UFFD_API.
    pub api: u64,
    /// Features asked for; on return, the features the kernel has.
    pub features: u64,
    /// On return, the ioctls the fd supports (bit n = ioctl nr n).
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioRange {
    /// Start address (page aligned).
    pub start: u64,
    /// Length in bytes (page aligned).
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioRegister {
    /// The range.
    pub range: UffdioRange,
    /// UFFDIO_REGISTER_MODE_*.
    pub mode: u64,
    /// On return, the ioctls the range supports.
    pub ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioCopy {
    /// Destination (page aligned, in the registered range).
    pub dst: u64,
    /// Source in the caller's memory.
    pub src: u64,
    /// Bytes.
    pub len: u64,
    /// UFFDIO_COPY_MODE_*.
    pub mode: u64,
    /// On return, bytes copied or a negative errno.
    pub copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioZeropage {
    /// The range.
    pub range: UffdioRange,
    /// UFFDIO_ZEROPAGE_MODE_*.
    pub mode: u64,
    /// On return, bytes zeroed or a negative errno.
    pub zeropage: i64,
}

/// `struct uffd_msg`, as read(2) returns it: the event byte, padding, and 24 bytes of
/// arguments (for PAGEFAULT: flags, address, thread id; for REMOVE/UNMAP: start, end).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdMsg {
    /// UFFD_EVENT_*.
    pub event: u8,
    /// Reserved.
    pub reserved1: u8,
    /// Reserved.
    pub reserved2: u16,
    /// Reserved.
    pub reserved3: u32,
    /// PAGEFAULT: flags; REMOVE/UNMAP: start.
    pub arg0: u64,
    /// PAGEFAULT: the faulting address; REMOVE/UNMAP: end.
    pub arg1: u64,
    /// PAGEFAULT: the thread id (with UFFD_FEATURE_THREAD_ID).
    pub arg2: u64,
}

const _: () = assert!(std::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioCopy>() == 40);
const _: () = assert!(std::mem::size_of::<UffdioZeropage>() == 32);
const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);

ioctl_iowr_nr!(UFFDIO_API, UFFDIO, 0x3F, UffdioApi);
ioctl_iowr_nr!(UFFDIO_REGISTER, UFFDIO, 0x00, UffdioRegister);
ioctl_ior_nr!(UFFDIO_WAKE, UFFDIO, 0x02, UffdioRange);
ioctl_iowr_nr!(UFFDIO_COPY, UFFDIO, 0x03, UffdioCopy);
ioctl_iowr_nr!(UFFDIO_ZEROPAGE, UFFDIO, 0x04, UffdioZeropage);
// /dev/userfaultfd: a new userfaultfd whose flags are the argument.
ioctl_io_nr!(USERFAULTFD_IOC_NEW, UFFDIO, 0x00);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // The values of include/uapi/linux/userfaultfd.h on x86-64.
        assert_eq!(UFFDIO_API(), 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER(), 0xc020_aa00);
        assert_eq!(UFFDIO_WAKE(), 0x8010_aa02);
        assert_eq!(UFFDIO_COPY(), 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE(), 0xc020_aa04);
        assert_eq!(USERFAULTFD_IOC_NEW(), 0xaa00);
    }
}
