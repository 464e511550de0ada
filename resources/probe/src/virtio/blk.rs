//! virtio-blk requests, one at a time: header, data and status in three descriptors.

use super::dma::{self, QueueArea};
use super::queue::{Virtqueue, DESC_F_NEXT, DESC_F_WRITE};
use super::{InitError, MmioDevice};

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const F_RO: u64 = 1 << 5;
pub const F_FLUSH: u64 = 1 << 9;
pub const SECTOR: u64 = 512;
pub const QUEUE_SIZE: u16 = 16;
pub const ID_BYTES: usize = 20;

pub struct Blk {
    pub dev: MmioDevice,
    pub queue: Virtqueue,
    pub features: u64,
    pub sectors: u64,
    /// The request page: header at +0, status at +0x100, id buffer at +0x200.
    pub request: u64,
}

pub enum BlkError {
    Init(InitError),
    Timeout,
    Status(u8),
}

impl BlkError {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Init(e) => e.as_str(),
            Self::Timeout => "timeout",
            Self::Status(S_IOERR) => "ioerr",
            Self::Status(_) => "bad-status",
        }
    }
}

impl Blk {
    /// Brings `dev` up with queue size 16, offering RO and FLUSH.
    pub fn open(dev: MmioDevice) -> Result<Self, BlkError> {
        Self::open_sized(dev, QUEUE_SIZE)
    }

    /// As `open`, with a queue of `size` entries (at most 256: the rings fit the queue area).
    pub fn open_sized(dev: MmioDevice, size: u16) -> Result<Self, BlkError> {
        let area: QueueArea = dma::queue_area(dev.index);
        dev.reset(); // before its rings are rewritten (see Virtqueue::new)
        let queue = Virtqueue::new(&area, size);
        let features = dev.negotiate(F_RO | F_FLUSH, queue.setup).map_err(BlkError::Init)?;
        dev.start().map_err(BlkError::Init)?;
        Ok(Self { dev, queue, features, sectors: dev.config_u64(0), request: area.request })
    }

    pub fn header(&self) -> u64 {
        self.request
    }

    pub fn status_addr(&self) -> u64 {
        self.request + 0x100
    }

    pub fn write_header(&self, kind: u32, sector: u64) {
        dma::write_u32(self.header(), kind);
        dma::write_u32(self.header() + 4, 0);
        dma::write_u64(self.header() + 8, sector);
        dma::write_u8(self.status_addr(), 0xff);
    }

    /// Publishes the chain at descriptor 0, notifies, and waits for it.
    pub fn submit_and_wait(&mut self) -> Result<(u32, u32), BlkError> {
        self.queue.push(0);
        self.dev.notify(0);
        self.queue.wait_used(|| false).ok_or(BlkError::Timeout)
    }

    /// One request; `data` is (address, length, device-writable).
    pub fn request(&mut self, kind: u32, sector: u64, data: Option<(u64, u32, bool)>) -> Result<u32, BlkError> {
        self.write_header(kind, sector);
        let status = self.status_addr();
        match data {
            Some((addr, len, writable)) => {
                let flags = if writable { DESC_F_WRITE } else { 0 };
                self.queue.set_desc(0, self.header(), 16, DESC_F_NEXT, 1);
                self.queue.set_desc(1, addr, len, flags | DESC_F_NEXT, 2);
                self.queue.set_desc(2, status, 1, DESC_F_WRITE, 0);
            }
            None => {
                self.queue.set_desc(0, self.header(), 16, DESC_F_NEXT, 2);
                self.queue.set_desc(2, status, 1, DESC_F_WRITE, 0);
            }
        }
        let (_, len) = self.submit_and_wait()?;
        match dma::read_u8(status) {
            S_OK => Ok(len),
            other => Err(BlkError::Status(other)),
        }
    }

    pub fn read(&mut self, sector: u64, addr: u64, len: u32) -> Result<(), BlkError> {
        self.request(T_IN, sector, Some((addr, len, true))).map(drop)
    }

    pub fn write(&mut self, sector: u64, addr: u64, len: u32) -> Result<(), BlkError> {
        self.request(T_OUT, sector, Some((addr, len, false))).map(drop)
    }

    pub fn flush(&mut self) -> Result<(), BlkError> {
        self.request(T_FLUSH, 0, None).map(drop)
    }

    /// The drive id (NUL-padded to 20 bytes).
    pub fn id(&mut self) -> Result<&'static [u8], BlkError> {
        let buf = self.request + 0x200;
        dma::zero(buf, ID_BYTES as u64);
        self.request(T_GET_ID, 0, Some((buf, ID_BYTES as u32, true)))?;
        let id = dma::slice(buf, ID_BYTES);
        let len = id.iter().position(|&b| b == 0).unwrap_or(ID_BYTES);
        Ok(&id[..len])
    }
}
