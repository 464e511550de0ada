//! `blk`: on the first virtio-blk device, read the whole disk and compute its CRC-32 (as read
//! before any write), then write `palisade-probe` at the start of its last sector (the rest of
//! the sector kept) and flush when the drive offers flushes. A read-only drive must refuse the
//! write with an I/O error (`write=refused`).
//! `probe: blk ok crc32=XXXXXXXX id=DRIVE_ID sectors=N write=ok|refused`

use crate::crc32::Crc32;
use crate::serial::{put_bytes, put_str, ResultLine};
use crate::virtio::blk::{Blk, BlkError, F_FLUSH, F_RO, S_IOERR, SECTOR};
use crate::virtio::dma::{self, DATA_START};
use crate::virtio::{self, DEVICE_ID_BLOCK};
use crate::zero_page::BootInfo;

pub const NAME: &str = "blk";
/// Bytes per read request.
const CHUNK: u64 = 256 * 1024;
pub const MARK: &[u8] = b"palisade-probe";

fn fail(what: &str) {
    ResultLine::fail(NAME.as_bytes()).text(what).end();
}

/// Eight lower-case hex digits.
pub fn put_hex32(value: u32) {
    for shift in (0..8).rev() {
        put_bytes(&[b"0123456789abcdef"[((value >> (shift * 4)) & 0xf) as usize]]);
    }
}

pub fn open_first(boot: &BootInfo) -> Result<Blk, &'static str> {
    if !dma::available(boot) {
        return Err("no-ram-for-dma");
    }
    let dev = virtio::find(boot, DEVICE_ID_BLOCK).ok_or("no-virtio-blk-device")?;
    Blk::open(dev).map_err(|e| e.as_str())
}

pub fn run(boot: &BootInfo) {
    let mut blk = match open_first(boot) {
        Ok(blk) => blk,
        Err(e) => return fail(e),
    };
    let mut id = [0u8; 20];
    let id_len = match blk.id() {
        Ok(bytes) => {
            id[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        }
        Err(e) => return fail(e.as_str()),
    };
    let sectors = blk.sectors;
    if sectors == 0 {
        return fail("empty-disk");
    }
    let mut crc = Crc32::new();
    let mut sector = 0;
    while sector < sectors {
        let count = (CHUNK / SECTOR).min(sectors - sector);
        let len = count * SECTOR;
        if let Err(e) = blk.read(sector, DATA_START, len as u32) {
            return fail(e.as_str());
        }
        crc.update(dma::slice(DATA_START, len as usize));
        sector += count;
    }
    let last = sectors - 1;
    if let Err(e) = blk.read(last, DATA_START, SECTOR as u32) {
        return fail(e.as_str());
    }
    dma::write_bytes(DATA_START, MARK);
    let write = match blk.write(last, DATA_START, SECTOR as u32) {
        Ok(()) if blk.features & F_RO == 0 => "ok",
        Err(BlkError::Status(S_IOERR)) if blk.features & F_RO != 0 => "refused",
        Ok(()) => return fail("read-only-drive-accepted-a-write"),
        Err(e) => return fail(e.as_str()),
    };
    if blk.features & F_FLUSH != 0 {
        if let Err(e) = blk.flush() {
            return fail(e.as_str());
        }
    }
    let line = ResultLine::ok(NAME.as_bytes());
    put_str(" crc32=");
    put_hex32(crc.finish());
    put_str(" id=");
    put_bytes(&id[..id_len]);
    let line = line.dec("sectors", sectors);
    put_str(" write=");
    put_str(write);
    line.end();
}
