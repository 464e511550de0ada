//! Guest memory to and from a snapshot memory file. The file holds the regions of guest RAM
//! one after the other (low RAM at offset 0, then RAM above 4 GiB). A Full snapshot writes
//! every page into a new file that replaces the old one whole (a new file renamed over it),
//! so a VM whose RAM is mapped from the old file keeps its pages. A Diff snapshot writes only
//! the pages of a [`DirtyLog`] (written since the last snapshot, by the guest or by the VMM),
//! at their offsets, into the file at the path as it is (Firecracker's semantics): onto a
//! copy of the previous snapshot's memory file it yields the full image, into a new file a
//! sparse file whose holes read as zeros. Files are created 0600 and never followed through
//! a link. Restore maps the file private and copy-on-write (`map_memory`): nothing is read
//! until the guest touches a page, and guest writes never reach the file. A Diff is refused
//! while another VM maps the file (advisory locks, see `memory_lock`): it would show in that
//! VM's untouched pages.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress, WriteVolatile};

use super::memory_lock::DiffLock;
use crate::snapshot::Replacement;
use crate::vstate::dirty::{dirty_runs, DirtyLog};
use crate::vstate::memory::{self, GuestMemory, MemoryError, MemoryOptions};

pub use crate::vstate::dirty::PAGE_SIZE;

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
    /// An existing file that a Diff would write guest memory into is open to other users.
    #[error("The memory file is accessible to other users (mode {0:o}): guest memory is written only into files of mode 0600 or stricter")]
    Mode(u32),
    /// Mapping the file as guest memory failed.
    #[error("Cannot map the memory file as guest memory")]
    Map(#[source] MemoryError),
    /// Guest memory could not be read.
    #[error("Cannot read guest memory")]
    Guest(#[source] vm_memory::GuestMemoryError),
    /// The dirty log does not fit guest memory.
    #[error("The dirty log of region {0} does not match its size")]
    Bitmap(usize),
    /// A Diff onto a file another VM's memory is mapped from (or that another VM's Diff is
    /// writing).
    #[error("The memory file {0:?} is mapped by another VM (loaded from it) or written by another VM's Diff: a Diff written into it would show in that VM's memory; write it onto a copy of the file")]
    Mapped(PathBuf),
    /// A load while another VM's Diff writes into the file.
    #[error("The memory file is being written by another VM's Diff snapshot")]
    BeingWritten,
}

/// What to write.
pub enum MemoryDump<'a> {
    /// Every page, into a new file that replaces the old one.
    Full,
    /// Only the pages of the log, into the file as it is (a hole in a new file).
    Diff(&'a DirtyLog),
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

/// Opens `path` for reading and writing, never truncated, without following a link or
/// blocking on a FIFO; refuses anything but a regular file and an existing file that other
/// users may access (a new file is created 0600).
fn open_in_place(path: &Path) -> Result<File, MemoryFileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
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
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(MemoryFileError::Mode(mode));
    }
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
/// file whole ([`prepare_full_memory`] and commit), a Diff writes into it in place
/// ([`write_diff_memory`]).
pub fn write_memory(
    mem: &GuestMemory,
    path: &Path,
    dump: MemoryDump<'_>,
) -> Result<MemoryWritten, MemoryFileError> {
    match dump {
        MemoryDump::Full => {
            let (new, written) = prepare_full_memory(mem, path)?;
            new.commit()
                .map_err(|e| MemoryFileError::Io("replace", e))?;
            Ok(written)
        }
        MemoryDump::Diff(log) => {
            write_diff_memory(mem, path, log, None).map(|(_, written)| written)
        }
    }
}

/// Writes the pages of `log` at their offsets into the file at `path`, which is opened as it
/// is, never truncated: a new or empty file is sized to guest memory (a sparse file), an
/// existing file must already have that size (a copy of the previous snapshot's memory file:
/// the Diff brings it up to date). Refused while another VM maps the file; `held` is the
/// file this VM's memory is mapped from (read-locked), which it may write into. Returns the
/// file (synced, read-locked until closed: the caller may hash it) and what was written.
pub fn write_diff_memory(
    mem: &GuestMemory,
    path: &Path,
    log: &DirtyLog,
    held: Option<&File>,
) -> Result<(File, MemoryWritten), MemoryFileError> {
    if log.regions.len() != mem.num_regions() {
        return Err(MemoryFileError::Bitmap(log.regions.len()));
    }
    let mut file = open_in_place(path)?;
    let lock = DiffLock::take(&file, path, held)?;
    let written = write_pages(mem, &mut file, log);
    lock.release(&file);
    Ok((file, written?))
}

fn write_pages(
    mem: &GuestMemory,
    file: &mut File,
    log: &DirtyLog,
) -> Result<MemoryWritten, MemoryFileError> {
    let file_size = total_size(mem);
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
    let (mut offset, mut pages) = (0, 0);
    for (slot, (region, bitmap)) in mem.iter().zip(&log.regions).enumerate() {
        let region_pages = region.len() / PAGE_SIZE;
        if bitmap.len() != region_pages.div_ceil(64) as usize {
            return Err(MemoryFileError::Bitmap(slot));
        }
        for (first, count) in dirty_runs(bitmap, region_pages) {
            write_range(
                file,
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
