//! `blk-bench`: sequential read of the whole first virtio-blk disk, then sequential write of
//! it (skipped on a read-only drive), `probe.blk_chunk=KIB` per request (default 256, at most
//! 4096). Prints a line before and after each pass so that the host can time them:
//! `probe: blk-bench read-start`, `probe: blk-bench read-done bytes=N`, the same for write,
//! then `probe: blk-bench ok bytes=N chunk_kib=K`.

use crate::cmdline;
use crate::serial::{put_dec, put_str, ResultLine};
use crate::virtio::blk::{Blk, BlkError, F_FLUSH, F_RO, SECTOR};
use crate::virtio::dma::{DATA_MAX, DATA_START};
use crate::zero_page::BootInfo;

pub const NAME: &str = "blk-bench";

fn fail(what: &str) {
    ResultLine::fail(NAME.as_bytes()).text(what).end();
}

fn marker(what: &str, bytes: u64) {
    put_str("probe: blk-bench ");
    put_str(what);
    put_str(" bytes=");
    put_dec(bytes);
    put_str("\n");
}

fn chunk_kib(boot: &BootInfo) -> u64 {
    let parsed = cmdline::param(boot.cmdline(), b"probe.blk_chunk").and_then(|v| {
        v.iter().try_fold(0u64, |acc, &c| Some(acc * 10 + u64::from((c as char).to_digit(10)?)))
    });
    parsed.filter(|&k| k > 0).unwrap_or(256).min(DATA_MAX / 1024)
}

/// One pass over the disk; returns the bytes moved.
fn pass(blk: &mut Blk, chunk: u64, write: bool) -> Result<u64, BlkError> {
    let mut sector = 0;
    while sector < blk.sectors {
        let count = (chunk / SECTOR).min(blk.sectors - sector);
        let len = (count * SECTOR) as u32;
        if write {
            blk.write(sector, DATA_START, len)?;
        } else {
            blk.read(sector, DATA_START, len)?;
        }
        sector += count;
    }
    Ok(blk.sectors * SECTOR)
}

pub fn run(boot: &BootInfo) {
    let mut blk = match super::blk::open_first(boot) {
        Ok(blk) => blk,
        Err(e) => return fail(e),
    };
    let kib = chunk_kib(boot);
    let chunk = kib * 1024;
    put_str("probe: blk-bench read-start\n");
    let bytes = match pass(&mut blk, chunk, false) {
        Ok(bytes) => bytes,
        Err(e) => return fail(e.as_str()),
    };
    marker("read-done", bytes);
    if blk.features & F_RO == 0 {
        put_str("probe: blk-bench write-start\n");
        if let Err(e) = pass(&mut blk, chunk, true) {
            return fail(e.as_str());
        }
        if blk.features & F_FLUSH != 0 {
            if let Err(e) = blk.flush() {
                return fail(e.as_str());
            }
        }
        marker("write-done", bytes);
    }
    ResultLine::ok(NAME.as_bytes()).dec("bytes", bytes).dec("chunk_kib", kib).end();
}
