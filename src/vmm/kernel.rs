//! Loading the kernel (ELF vmlinux or bzImage), the initrd and the command line.

use std::fs::File;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::arch::x86_64::boot_params::{initrd_load_address, InitrdPlacement};
use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use crate::arch::x86_64::regs::EntryMode;
use crate::vstate::memory::GuestMemory;
use crate::vstate::vcpu::BootEntry;

/// Firecracker's command line when the config gives none.
pub const DEFAULT_KERNEL_CMDLINE: &str = "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 \
     i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Errors of kernel, initrd and command line loading.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A file cannot be opened.
    #[error("Cannot open the {what} {path}: {source}")]
    Open {
        /// "kernel" or "initrd".
        what: &'static str,
        /// Path given.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The kernel is neither a loadable ELF nor a bzImage.
    #[error("Cannot load the kernel {path}: as ELF: {elf}; as bzImage: {bzimage}")]
    Load {
        /// Path given.
        path: String,
        /// Why ELF loading failed.
        elf: linux_loader::loader::Error,
        /// Why bzImage loading failed.
        bzimage: linux_loader::loader::Error,
    },
    /// The initrd does not fit in low RAM above the kernel.
    #[error("The initrd of {size} bytes does not fit in guest memory above the kernel")]
    InitrdTooLarge {
        /// Its size.
        size: u64,
    },
    /// Copying the initrd failed.
    #[error("Cannot copy the initrd into guest memory")]
    InitrdCopy(#[source] vm_memory::GuestMemoryError),
    /// The command line is invalid or too long.
    #[error("Invalid kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    /// Writing the command line failed.
    #[error("Cannot write the kernel command line")]
    CmdlineCopy(#[source] linux_loader::loader::Error),
}

/// A kernel in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// Where and how the boot vCPU enters.
    pub entry: BootEntry,
    /// First address past the kernel image.
    pub end: u64,
    /// The bzImage setup header, None for ELF.
    pub setup_header: Option<setup_header>,
}

/// Loads an ELF vmlinux (entered through PVH when it has the PVH note, else through the
/// 64-bit boot protocol) or a bzImage, from `file`, opened from `path` when the boot source
/// was checked.
pub fn load_kernel(
    mem: &GuestMemory,
    file: &mut File,
    path: &str,
) -> Result<LoadedKernel, KernelError> {
    let himem = Some(GuestAddress(HIMEM_START));
    let elf = match Elf::load(mem, None, file, himem) {
        Ok(r) => {
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => BootEntry {
                    address: addr.0,
                    mode: EntryMode::Pvh,
                },
                _ => BootEntry {
                    address: r.kernel_load.0,
                    mode: EntryMode::Linux64,
                },
            };
            return Ok(LoadedKernel {
                entry,
                end: r.kernel_end,
                setup_header: None,
            });
        }
        Err(e) => e,
    };
    match BzImage::load(mem, None, file, himem) {
        Ok(r) => Ok(LoadedKernel {
            entry: BootEntry {
                address: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                mode: EntryMode::Linux64,
            },
            end: r.kernel_end,
            setup_header: r.setup_header,
        }),
        Err(bzimage) => Err(KernelError::Load {
            path: path.to_string(),
            elf,
            bzimage,
        }),
    }
}

/// Copies the initrd (`file`, opened from `path`) to the top of low RAM, above the kernel.
pub fn load_initrd(
    mem: &GuestMemory,
    file: &mut File,
    path: &str,
    kernel_end: u64,
) -> Result<InitrdPlacement, KernelError> {
    let size = file
        .metadata()
        .map_err(|source| KernelError::Open {
            what: "initrd",
            path: path.to_string(),
            source,
        })?
        .len();
    let address = initrd_load_address(mem, size)
        .filter(|a| *a >= kernel_end)
        .ok_or(KernelError::InitrdTooLarge { size })?;
    mem.read_exact_volatile_from(GuestAddress(address), file, size as usize)
        .map_err(KernelError::InitrdCopy)?;
    Ok(InitrdPlacement { address, size })
}

/// The command line from `args` (or Firecracker's default), before devices add to it.
pub fn build_command_line(args: Option<&str>) -> Result<Cmdline, KernelError> {
    Ok(Cmdline::try_from(
        args.unwrap_or(DEFAULT_KERNEL_CMDLINE),
        CMDLINE_MAX_SIZE,
    )?)
}

/// Writes `cmdline` at CMDLINE_START; returns its length.
pub fn load_command_line(mem: &GuestMemory, cmdline: &Cmdline) -> Result<usize, KernelError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(KernelError::CmdlineCopy)?;
    Ok(cmdline.as_cstring()?.as_bytes().len())
}
