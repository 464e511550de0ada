//! Guest memory to and from a snapshot memory file. The file holds the regions of guest RAM
//! one after the other (low RAM at offset 0, then RAM above 4 GiB). A Full snapshot writes
//! every page; a Diff snapshot writes only the pages KVM logged as written by the guest since
//! the last KVM_GET_DIRTY_LOG, at their offsets, into a sparse file (or over the previous
//! Full file, which it then brings up to date). The file is created 0600 and never followed
//! through a link; a Full snapshot replaces the file whole (a new file renamed over it), so
//! a VM whose RAM is mapped from the old file keeps its pages. Restore maps the file private and copy-on-write (`map_memory`): nothing is
//! read until the guest touches a page, and guest writes never reach the file.
//!
//! KVM's dirty log sees guest writes only: pages that the VMM itself writes into guest memory
//! (virtio used rings, block reads, net RX) are not in it, so the caller must add those (see
//! `MemoryDump::Diff`) or take a Full snapshot.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress, WriteVolatile};

use crate::snapshot::Replacement;
use crate::vstate::memory::{self, GuestMemory, MemoryError, MemoryOptions};

/// Guest page size.
pub const PAGE_SIZE: u64 = 4096;

/// Errors of memory files.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// Opening, sizing or writing the file failed.
    #[error("Cannot {0} the memory file")]
    Io(&'static str, #[source] std::io::Error),
    /// The path names a directory, device, FIFO or socket.
    #[error("The memory file is not a regular file")]
    NotRegular,
    /// The file's size is not the guest's memory size.
    #[error("The memory file holds {found} bytes, the guest has {expected}")]
    Size {
        /// Bytes in the file.
        found: u64,
        /// Bytes of guest memory.
        expected: u64,
    },
    /// Mapping the file as guest memory failed.
    #[error("Cannot map the memory file as guest memory")]
    Map(#[source] MemoryError),
    /// KVM_GET_DIRTY_LOG failed.
    #[error("Cannot read KVM's dirty page log")]
    DirtyLog(#[source] kvm_ioctls::Error),
    /// Guest memory could not be read.
    #[error("Cannot read guest memory")]
    Guest(#[source] vm_memory::GuestMemoryError),
    /// The extra dirty bitmap does not fit guest memory.
    #[error("The dirty bitmap of region {0} does not match its size")]
    Bitmap(usize),
}

/// What to write.
pub enum MemoryDump<'a> {
    /// Every page, into a new file that replaces the old one.
    Full,
    /// Only the pages in KVM's dirty log of `vm` (registered with dirty tracking, slot n =
    /// region n) or in `extra` (one bitmap per region, one bit per page, as KVM's: pages the
    /// VMM wrote); the rest of the file is left as it is (a hole in a new file).
    Diff {
        /// The VM whose dirty log is read (and thereby cleared).
        vm: &'a VmFd,
        /// Pages written by the VMM itself, per region.
        extra: Option<&'a [Vec<u64>]>,
    },
}

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryWritten {
    /// Pages written.
    pub pages: u64,
    /// Size of the file (the guest's memory size).
    pub file_size: u64,
}

fn total_size(mem: &GuestMemory) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Opens `path` for writing without following a link or blocking on a FIFO, refuses anything
/// but a regular file, and makes it 0600 (a new file is created so).
fn open_for_write(path: &Path) -> Result<File, MemoryFileError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| MemoryFileError::Io("open", e))?;
    let meta = file
        .metadata()
        .map_err(|e| MemoryFileError::Io("stat", e))?;
    if !meta.is_file() {
        return Err(MemoryFileError::NotRegular);
    }
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| MemoryFileError::Io("restrict the mode of", e))?;
    Ok(file)
}

/// Writes every page of guest memory into a new file that replaces `path` when committed
/// (created 0600 beside it, see [`Replacement`]): a VM whose memory is mapped from the file
/// at `path` (a clone re-snapshotting over the files it was loaded from) keeps its own pages.
pub fn prepare_full_memory(
    mem: &GuestMemory,
    path: &Path,
) -> Result<(Replacement, MemoryWritten), MemoryFileError> {
    let file_size = total_size(mem);
    let mut new = Replacement::create(path).map_err(|e| MemoryFileError::Io("create", e))?;
    let file = new.file();
    file.set_len(file_size)
        .map_err(|e| MemoryFileError::Io("size", e))?;
    let (mut offset, mut pages) = (0, 0);
    for region in mem.iter() {
        write_range(file, region, 0, region.len(), offset)?;
        offset += region.len();
        pages += region.len() / PAGE_SIZE;
    }
    Ok((new, MemoryWritten { pages, file_size }))
}

/// Writes guest memory to the file at `path` (see the module doc): a Full dump replaces the
/// file whole ([`prepare_full_memory`] and commit), a Diff writes into it in place.
pub fn write_memory(
    mem: &GuestMemory,
    path: &Path,
    dump: MemoryDump<'_>,
) -> Result<MemoryWritten, MemoryFileError> {
    let (vm, extra) = match dump {
        MemoryDump::Full => {
            let (new, written) = prepare_full_memory(mem, path)?;
            new.commit()
                .map_err(|e| MemoryFileError::Io("replace", e))?;
            return Ok(written);
        }
        MemoryDump::Diff { vm, extra } => (vm, extra),
    };
    let file_size = total_size(mem);
    let mut file = open_for_write(path)?;
    let mut pages = 0;
    let found = file
        .metadata()
        .map_err(|e| MemoryFileError::Io("stat", e))?
        .len();
    if found != file_size {
        if found != 0 {
            return Err(MemoryFileError::Size {
                found,
                expected: file_size,
            });
        }
        file.set_len(file_size)
            .map_err(|e| MemoryFileError::Io("size", e))?;
    }
    let mut offset = 0;
    for (slot, region) in mem.iter().enumerate() {
        let len = usize::try_from(region.len()).map_err(|_| MemoryFileError::Bitmap(slot))?;
        let mut bitmap = vm
            .get_dirty_log(slot as u32, len)
            .map_err(MemoryFileError::DirtyLog)?;
        if let Some(extra) = extra {
            let more = extra.get(slot).ok_or(MemoryFileError::Bitmap(slot))?;
            if more.len() != bitmap.len() {
                return Err(MemoryFileError::Bitmap(slot));
            }
            for (w, m) in bitmap.iter_mut().zip(more) {
                *w |= m;
            }
        }
        let region_pages = region.len() / PAGE_SIZE;
        for (first, count) in dirty_runs(&bitmap, region_pages) {
            write_range(
                &mut file,
                region,
                first * PAGE_SIZE,
                count * PAGE_SIZE,
                offset + first * PAGE_SIZE,
            )?;
            pages += count;
        }
        offset += region.len();
    }
    file.sync_all()
        .map_err(|e| MemoryFileError::Io("sync", e))?;
    Ok(MemoryWritten { pages, file_size })
}

/// Clears KVM's dirty log of every region (after a Full snapshot, so that the next Diff holds
/// only later writes).
pub fn clear_dirty_log(vm: &VmFd, mem: &GuestMemory) -> Result<(), MemoryFileError> {
    for (slot, region) in mem.iter().enumerate() {
        let len = usize::try_from(region.len()).map_err(|_| MemoryFileError::Bitmap(slot))?;
        vm.get_dirty_log(slot as u32, len)
            .map_err(MemoryFileError::DirtyLog)?;
    }
    Ok(())
}

/// (first page, page count) of each run of set bits among the first `pages` bits.
fn dirty_runs(bitmap: &[u64], pages: u64) -> Vec<(u64, u64)> {
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

fn write_range(
    file: &mut File,
    region: &<GuestMemory as GuestMemoryBackend>::R,
    start: u64,
    len: u64,
    file_offset: u64,
) -> Result<(), MemoryFileError> {
    let len = usize::try_from(len).map_err(|_| MemoryFileError::Bitmap(0))?;
    let slice = region
        .get_slice(MemoryRegionAddress(start), len)
        .map_err(MemoryFileError::Guest)?;
    file.seek(SeekFrom::Start(file_offset))
        .map_err(|e| MemoryFileError::Io("seek in", e))?;
    file.write_all_volatile(&slice)
        .map_err(|e| MemoryFileError::Io("write", std::io::Error::other(e)))
}

/// Maps the memory file at `path` as `size` bytes of guest memory, private and
/// copy-on-write, hardened as fresh guest RAM (guard pages, no core dumps, no fork, no KSM).
/// The file must be a regular file of exactly `size` bytes; nothing is read.
pub fn map_memory(
    path: &Path,
    size: u64,
    opts: MemoryOptions,
) -> Result<GuestMemory, MemoryFileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| MemoryFileError::Io("open", e))?;
    map_memory_file(&file, size, opts)
}

/// As `map_memory`, for a file the caller opened (e.g. the one whose identity it checked
/// against the state file, so that the checked file is the mapped one).
pub fn map_memory_file(
    file: &File,
    size: u64,
    opts: MemoryOptions,
) -> Result<GuestMemory, MemoryFileError> {
    let meta = file
        .metadata()
        .map_err(|e| MemoryFileError::Io("stat", e))?;
    if !meta.is_file() {
        return Err(MemoryFileError::NotRegular);
    }
    if meta.len() != size {
        return Err(MemoryFileError::Size {
            found: meta.len(),
            expected: size,
        });
    }
    memory::create_guest_memory_from_file(file, size, opts).map_err(MemoryFileError::Map)
}

#[cfg(test)]
mod tests;
