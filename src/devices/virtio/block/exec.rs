//! Running a parsed virtio-blk request against the backing file and guest memory.

use vm_memory::{Bytes, GuestAddress};

use super::config::CacheType;
use super::disk::{Disk, DiskError, SECTOR_SIZE};
use super::request::{Request, RequestType, HEADER_SIZE, ID_BYTES};
use crate::devices::virtio::buffers;
use crate::devices::virtio::chain::Segment;
use crate::vstate::memory::GuestMemory;

/// Why an accepted request failed while it ran.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A write to a read-only drive.
    #[error("Write to a read-only drive")]
    ReadOnly,
    /// The backing file failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The id could not be copied to the guest.
    #[error("Cannot write the drive id to guest memory")]
    Id(#[source] vm_memory::GuestMemoryError),
}

/// What a request runs against.
pub struct ExecContext<'a> {
    /// The backing file.
    pub disk: &'a mut Disk,
    /// Guest memory.
    pub mem: &'a GuestMemory,
    /// The request's buffers.
    pub segments: &'a [Segment],
    /// Refuse writes.
    pub read_only: bool,
    /// Whether flushes reach the disk.
    pub cache: CacheType,
    /// The GET_ID answer (the drive id, NUL-padded).
    pub id: &'a [u8; ID_BYTES],
}

/// Runs `req`; returns the data bytes written to guest memory (the status byte excluded).
pub fn execute(req: &Request, ctx: &mut ExecContext<'_>) -> Result<u32, ExecError> {
    let len = u64::from(req.data_len);
    match req.kind {
        RequestType::In => {
            let pieces = buffers::stream_pieces(ctx.segments, true, 0, len);
            ctx.disk
                .read_to(ctx.mem, req.sector * SECTOR_SIZE, pieces)?;
            Ok(req.data_len)
        }
        RequestType::Out => {
            if ctx.read_only {
                return Err(ExecError::ReadOnly);
            }
            let pieces = buffers::stream_pieces(ctx.segments, false, u64::from(HEADER_SIZE), len);
            ctx.disk
                .write_from(ctx.mem, req.sector * SECTOR_SIZE, pieces)?;
            Ok(0)
        }
        RequestType::Flush => {
            if ctx.cache == CacheType::Writeback {
                ctx.disk.sync()?;
            }
            Ok(0)
        }
        RequestType::GetId => {
            buffers::write_stream(ctx.mem, ctx.segments, 0, ctx.id).map_err(ExecError::Id)?;
            Ok(ID_BYTES as u32)
        }
        RequestType::Unsupported(_) => Ok(0),
    }
}

/// Writes the status byte.
pub fn write_status(
    mem: &GuestMemory,
    addr: GuestAddress,
    status: u32,
) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_obj(status as u8, addr)
}
