//! `blk-watch`: waits (up to ~60 s) for the first virtio-blk device to change its
//! configuration (ConfigGeneration moves, as after `PATCH /drives/{id}` with a new
//! `path_on_host`), then reads the new capacity and the CRC-32 of the first sector.
//! `probe: blk-watch waiting sectors=N`, then `probe: blk-watch ok sectors=M crc32=XXXXXXXX`.

use crate::crc32::Crc32;
use crate::serial::{put_dec, put_str, ResultLine};
use crate::virtio::blk::SECTOR;
use crate::virtio::dma::{self, DATA_START};
use crate::virtio::{tsc, TIMEOUT_TSC};
use crate::zero_page::BootInfo;

pub const NAME: &str = "blk-watch";
const REG_CONFIG_GENERATION: u64 = 0xfc;

fn fail(what: &str) {
    ResultLine::fail(NAME.as_bytes()).text(what).end();
}

pub fn run(boot: &BootInfo) {
    let mut blk = match super::blk::open_first(boot) {
        Ok(blk) => blk,
        Err(e) => return fail(e),
    };
    let generation = blk.dev.read32(REG_CONFIG_GENERATION);
    put_str("probe: blk-watch waiting sectors=");
    put_dec(blk.sectors);
    put_str("\n");
    let start = tsc();
    // One register read per ~1M TSC ticks (under a millisecond): each read is a VM exit.
    let mut last = start;
    while blk.dev.read32(REG_CONFIG_GENERATION) == generation {
        if tsc().wrapping_sub(start) > 6 * TIMEOUT_TSC {
            return fail("no-config-change");
        }
        while tsc().wrapping_sub(last) < 1_000_000 {
            core::hint::spin_loop();
        }
        last = tsc();
    }
    blk.sectors = blk.dev.config_u64(0);
    if blk.sectors == 0 {
        return fail("empty-disk");
    }
    if let Err(e) = blk.read(0, DATA_START, SECTOR as u32) {
        return fail(e.as_str());
    }
    let mut crc = Crc32::new();
    crc.update(dma::slice(DATA_START, SECTOR as usize));
    let line = ResultLine::ok(NAME.as_bytes()).dec("sectors", blk.sectors);
    put_str(" crc32=");
    super::blk::put_hex32(crc.finish());
    line.end();
}
