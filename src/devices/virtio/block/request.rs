//! virtio-blk requests (virtio 1.x 5.2.6), parsed from a checked chain ([`super::exec`] runs
//! them).
//!
//! A request is a 16-byte header (type, reserved, sector) at the start of the readable stream,
//! the data (readable for writes, writable for reads and GET_ID) and a status byte at the end
//! of the writable stream. Anything else is refused with VIRTIO_BLK_S_IOERR: a short header,
//! data in the wrong direction, a length that is not a positive multiple of 512 or more than
//! [`MAX_DATA_BYTES`] (the most an honest driver sends under the `seg_max` and `size_max` the
//! device advertises), a sector whose byte offset overflows, a range past the end of the disk,
//! a write to a read-only drive.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};

use super::disk::SECTOR_SIZE;
use crate::devices::virtio::buffers::{self, Layout, LayoutError};
use crate::devices::virtio::chain::Segment;
use crate::vstate::memory::GuestMemory;

/// Size of the request header.
pub const HEADER_SIZE: u32 = 16;
/// Size of the GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Data buffers per request the device advertises (`seg_max`: the queue size less the header
/// and status descriptors).
pub const SEG_MAX: u32 = 254;
/// Bytes per data buffer the device advertises (`size_max`).
pub const SIZE_MAX: u32 = 64 * 1024;
/// The largest data length of one request: a request runs on the VMM thread whole, so this
/// bounds how long one request can keep the thread (and the API) waiting.
pub const MAX_DATA_BYTES: u32 = SEG_MAX * SIZE_MAX;

/// The operation a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// VIRTIO_BLK_T_IN: read sectors.
    In,
    /// VIRTIO_BLK_T_OUT: write sectors.
    Out,
    /// VIRTIO_BLK_T_FLUSH.
    Flush,
    /// VIRTIO_BLK_T_GET_ID: the drive id.
    GetId,
    /// Anything else (answered VIRTIO_BLK_S_UNSUPP).
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }
}

/// Why a request is refused before it runs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// A buffer is empty, outside guest memory or out of order.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Fewer than 16 readable bytes.
    #[error("The request header is {0} bytes, less than 16")]
    HeaderTooShort(u32),
    /// The header cannot be read.
    #[error("The request header cannot be read")]
    HeaderUnreadable,
    /// Data in a direction the request type does not use.
    #[error("{0:?} request with data in the wrong direction")]
    WrongDirection(RequestType),
    /// Data length 0 or not a multiple of 512.
    #[error("Data length {0} is not a positive multiple of 512")]
    DataLength(u32),
    /// More data than `seg_max * size_max`.
    #[error("Data length {0} is over the device's limit of {MAX_DATA_BYTES} bytes")]
    TooLarge(u32),
    /// `sector * 512` does not fit in 64 bits.
    #[error("Sector {0} overflows as a byte offset")]
    SectorOverflow(u64),
    /// The range ends past the disk.
    #[error("Sectors {sector}..{end} are past the end of the disk ({capacity} sectors)")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// One past the last sector.
        end: u64,
        /// Disk capacity.
        capacity: u64,
    },
    /// The GET_ID buffer is smaller than 20 bytes.
    #[error("The GET_ID buffer is {0} bytes, less than 20")]
    IdBufferTooShort(u32),
}

/// A parsed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub kind: RequestType,
    /// First sector (In and Out).
    pub sector: u64,
    /// Bytes of data (In, Out, GetId).
    pub data_len: u32,
}

impl Request {
    /// Parses and checks the request in `segments` against a disk of `capacity` sectors.
    /// The caller has found the status byte already (the chain's last writable byte).
    pub fn parse(
        mem: &GuestMemory,
        segments: &[Segment],
        capacity: u64,
    ) -> Result<Self, RequestError> {
        let layout = Layout::check(mem, segments)?;
        if layout.readable < HEADER_SIZE {
            return Err(RequestError::HeaderTooShort(layout.readable));
        }
        let mut header = [0u8; HEADER_SIZE as usize];
        buffers::read_stream(mem, segments, 0, &mut header)
            .map_err(|_| RequestError::HeaderUnreadable)?;
        let (type_bytes, rest) = header.split_at(4);
        let kind = RequestType::from(u32::from_le_bytes(
            type_bytes.try_into().unwrap_or_default(),
        ));
        let sector = u64::from_le_bytes(rest[4..].try_into().unwrap_or_default());
        // The last writable byte is the status.
        let readable_data = layout.readable - HEADER_SIZE;
        let writable_data = layout.writable.saturating_sub(1);
        let data_len = match kind {
            RequestType::In if readable_data > 0 => return Err(RequestError::WrongDirection(kind)),
            RequestType::Out if writable_data > 0 => {
                return Err(RequestError::WrongDirection(kind))
            }
            RequestType::In => writable_data,
            RequestType::Out => readable_data,
            RequestType::GetId if writable_data < ID_BYTES as u32 => {
                return Err(RequestError::IdBufferTooShort(writable_data))
            }
            RequestType::GetId => writable_data,
            RequestType::Flush | RequestType::Unsupported(_) => 0,
        };
        if matches!(kind, RequestType::In | RequestType::Out) {
            if data_len == 0 || u64::from(data_len) % SECTOR_SIZE != 0 {
                return Err(RequestError::DataLength(data_len));
            }
            if data_len > MAX_DATA_BYTES {
                return Err(RequestError::TooLarge(data_len));
            }
            sector
                .checked_mul(SECTOR_SIZE)
                .ok_or(RequestError::SectorOverflow(sector))?;
            let end = sector.saturating_add(u64::from(data_len) / SECTOR_SIZE);
            if end > capacity {
                return Err(RequestError::OutOfRange {
                    sector,
                    end,
                    capacity,
                });
            }
        }
        Ok(Self {
            kind,
            sector,
            data_len,
        })
    }

    /// Bytes the rate limiter charges to the bandwidth bucket.
    pub fn transfer_bytes(&self) -> u64 {
        match self.kind {
            RequestType::In | RequestType::Out => u64::from(self.data_len),
            _ => 0,
        }
    }
}
