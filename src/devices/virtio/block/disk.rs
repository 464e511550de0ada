//! The backing file of a drive: positioned reads and writes straight between the file and
//! guest memory (no bounce buffer, nothing allocated per request), and flushes.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};

use vm_memory::{Address, Bytes, GuestAddress};

use crate::vstate::memory::GuestMemory;

/// Bytes per sector, the unit of virtio-blk offsets and capacities.
pub const SECTOR_SIZE: u64 = 512;

/// Errors of the backing file.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file cannot be opened.
    #[error("Cannot open the drive file {path}")]
    Open {
        /// Path given.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Its size cannot be read.
    #[error("Cannot read the size of the drive file {path}")]
    Size {
        /// Path given.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A read, write or seek failed.
    #[error("I/O error on the drive file")]
    Io(#[source] std::io::Error),
    /// Moving data between the file and guest memory failed.
    #[error("I/O error between the drive file and guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// The file ended before the requested range (it shrank under the VM).
    #[error("The drive file is shorter than the request")]
    ShortRead,
}

/// Opens a drive's backing file (read-only when `read_only`): without blocking (a FIFO
/// nobody writes would hold the VMM thread for good) and refusing anything but a regular file
/// or a block device (a FIFO, a socket or a character device such as /dev/mem is no disk).
pub fn open_backing(path: &str, read_only: bool) -> std::io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !(kind.is_file() || kind.is_block_device()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file or a block device",
        ));
    }
    Ok(file)
}

/// An open backing file.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: String,
    sectors: u64,
}

impl Disk {
    /// Opens `path` (read-only when `read_only`) and reads its size.
    pub fn open(path: &str, read_only: bool) -> Result<Self, DiskError> {
        let mut file = open_backing(path, read_only).map_err(|source| DiskError::Open {
            path: path.to_string(),
            source,
        })?;
        // Seeking to the end works for regular files and block devices alike.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| DiskError::Size {
                path: path.to_string(),
                source,
            })?;
        if size % SECTOR_SIZE != 0 {
            log::warn!(
                "Drive file {path} is {size} bytes, not a multiple of {SECTOR_SIZE}; \
                 the last {} bytes are not visible to the guest",
                size % SECTOR_SIZE
            );
        }
        Ok(Self {
            file,
            path: path.to_string(),
            sectors: size / SECTOR_SIZE,
        })
    }

    /// A disk of `sectors` over any file (a pipe, for tests that decide when reads finish).
    #[cfg(test)]
    pub fn from_file_for_test(file: File, sectors: u64) -> Self {
        Self {
            file,
            path: "test".into(),
            sectors,
        }
    }

    /// Capacity in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// The path it was opened from.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn seek(&mut self, offset: u64) -> Result<(), DiskError> {
        self.file
            .seek(SeekFrom::Start(offset))
            .map(drop)
            .map_err(DiskError::Io)
    }

    /// Reads the file from `offset` into the guest memory `pieces`, in order.
    pub fn read_to(
        &mut self,
        mem: &GuestMemory,
        offset: u64,
        pieces: impl Iterator<Item = (GuestAddress, usize)>,
    ) -> Result<u64, DiskError> {
        self.seek(offset)?;
        let mut total = 0u64;
        for (addr, len) in pieces {
            let mut done = 0;
            while done < len {
                let n = mem
                    .read_volatile_from(addr.unchecked_add(done as u64), &mut self.file, len - done)
                    .map_err(DiskError::Memory)?;
                if n == 0 {
                    return Err(DiskError::ShortRead);
                }
                done += n;
            }
            total += len as u64;
        }
        Ok(total)
    }

    /// Writes the guest memory `pieces`, in order, to the file from `offset`.
    pub fn write_from(
        &mut self,
        mem: &GuestMemory,
        offset: u64,
        pieces: impl Iterator<Item = (GuestAddress, usize)>,
    ) -> Result<u64, DiskError> {
        self.seek(offset)?;
        let mut total = 0u64;
        for (addr, len) in pieces {
            mem.write_all_volatile_to(addr, &mut self.file, len)
                .map_err(DiskError::Memory)?;
            total += len as u64;
        }
        Ok(total)
    }

    /// The open file, for the io_uring engine (the file stays open while a request that
    /// names it is in flight: the device waits for them before it drops a `Disk`).
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.file)
    }

    /// Makes written data durable (fdatasync).
    pub fn sync(&self) -> Result<(), DiskError> {
        self.file.sync_data().map_err(DiskError::Io)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    #[test]
    fn a_fifo_or_a_character_device_is_refused_at_once_and_never_blocks_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Read-only: a blocking open would wait for a writer for good.
        for path in [fifo.to_str().unwrap(), "/dev/null"] {
            let e = open_backing(path, true).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{path}");
            assert!(matches!(
                Disk::open(path, false),
                Err(DiskError::Open { .. })
            ));
        }
    }

    #[test]
    fn reads_and_writes_go_between_file_offsets_and_guest_pieces() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&(0..2048u32).map(|i| i as u8).collect::<Vec<_>>())
            .unwrap();
        let path = file.path().to_str().unwrap();
        let mut disk = Disk::open(path, false).unwrap();
        assert_eq!(disk.sectors(), 4);
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let pieces = [(GuestAddress(0x1000), 10), (GuestAddress(0x2000), 502)];
        assert_eq!(disk.read_to(&mem, 512, pieces.into_iter()).unwrap(), 512);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x2000)).unwrap(), 10);

        mem.write_slice(b"palisade", GuestAddress(0x3000)).unwrap();
        disk.write_from(&mem, 1536, [(GuestAddress(0x3000), 8)].into_iter())
            .unwrap();
        disk.sync().unwrap();
        let content = std::fs::read(path).unwrap();
        assert_eq!(&content[1536..1544], b"palisade");
    }

    #[test]
    fn reading_past_the_end_of_the_file_is_an_error() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), [0u8; 600]).unwrap();
        let mut disk = Disk::open(file.path().to_str().unwrap(), true).unwrap();
        assert_eq!(disk.sectors(), 1);
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let r = disk.read_to(&mem, 512, [(GuestAddress(0), 512)].into_iter());
        assert!(matches!(r, Err(DiskError::ShortRead)));
    }

    #[test]
    fn a_read_only_disk_refuses_writes_at_the_host() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), [0u8; 512]).unwrap();
        let mut disk = Disk::open(file.path().to_str().unwrap(), true).unwrap();
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        assert!(disk
            .write_from(&mem, 0, [(GuestAddress(0), 512)].into_iter())
            .is_err());
    }
}
