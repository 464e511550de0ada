//! `balloon-stats`: the statistics queue of virtio-balloon (VIRTIO_BALLOON_F_STATS_VQ). First a
//! malformed buffer of 7 bytes, which the device must give back at once (used length 0); then
//! a buffer with free_memory (tag 4) = 1000 and total_memory (tag 5) = 64 MiB, and for each of
//! 2 rounds: wait until the device gives it back (its polling interval passed), write
//! free_memory = 1000 + round, hand it over again. Prints
//! `probe: balloon-stats ok rounds=2 free=1002`; the device then holds the last buffer.

use crate::serial::ResultLine;
use crate::virtio::dma::{self, DATA_START};
use crate::zero_page::BootInfo;

pub const NAME: &str = "balloon-stats";
const BUFFER: u64 = DATA_START + 0x38_0000;
const ROUNDS: u64 = 2;

fn fail(what: &str) {
    ResultLine::fail(NAME.as_bytes()).text(what).end();
}

fn write_entry(at: u64, tag: u16, value: u64) {
    dma::write_u8(at, tag as u8);
    dma::write_u8(at + 1, (tag >> 8) as u8);
    for i in 0..8 {
        dma::write_u8(at + 2 + i, (value >> (8 * i)) as u8);
    }
}

pub fn run(boot: &BootInfo) {
    let (dev, _inflate, _deflate, stats) = match super::balloon::open_with(boot, true) {
        Ok(opened) => opened,
        Err(e) => return fail(e),
    };
    let Some(mut queue) = stats else {
        return fail("no-stats-queue");
    };
    queue.set_desc(0, BUFFER, 7, 0, 0);
    queue.push(0);
    dev.notify(2);
    match queue.wait_used(|| false) {
        Some((0, 0)) => {}
        Some(_) => return fail("malformed-buffer-used-with-a-length"),
        None => return fail("malformed-buffer-kept"),
    }
    write_entry(BUFFER, 4, 1000);
    write_entry(BUFFER + 10, 5, 64 << 20);
    queue.set_desc(0, BUFFER, 20, 0, 0);
    queue.push(0);
    dev.notify(2);
    for round in 1..=ROUNDS {
        if queue.wait_used(|| false).is_none() {
            return fail("no-request");
        }
        write_entry(BUFFER, 4, 1000 + round);
        queue.push(0);
        dev.notify(2);
    }
    ResultLine::ok(NAME.as_bytes()).dec("rounds", ROUNDS).dec("free", 1000 + ROUNDS).end();
}
