//! `blk-flood`: the "same head 256 times" attack on the first virtio-blk device. One chain
//! (header, then as many data descriptors as the queue allows, all over the same `size_max`
//! or twice `size_max` bytes of guest RAM (from the device's config space), then the status
//! byte) is put in every slot of a 256-entry available
//! ring, notified, and refilled as the device answers, for `probe.secs=` seconds (TSC time,
//! `probe.tsc_mhz=`). Two phases of half the time each:
//! - `max`: T_IN, 254 x size_max = the largest request the device advertises: answered S_OK;
//! - `over`: T_OUT, 254 x 2 size_max, twice that: answered S_IOERR (and nothing written).
//! Prints `probe: blk-flood flood-start` and `probe: blk-flood flood-done` around the flood
//! (the host measures in between), then
//! `probe: blk-flood ok max_answered=N max_ok=N over_answered=M over_ioerr=M`, or `fail ...`.

use crate::cmdline;
use crate::netstack::parse_dec;
use crate::serial::{put_str, ResultLine};
use crate::virtio::blk::{Blk, S_IOERR, S_OK, T_IN, T_OUT};
use crate::virtio::dma::{self, DATA_START};
use crate::virtio::queue::{DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::{tsc, STATUS_NEEDS_RESET, TIMEOUT_TSC};
use crate::zero_page::BootInfo;

pub const NAME: &str = "blk-flood";
const RING: u16 = 256;
/// Header + data + status descriptors fill the 256-entry table.
const SEGMENTS: u16 = RING - 2;

/// What one phase saw.
#[derive(Default)]
struct Tally {
    answered: u64,
    ok: u64,
    ioerr: u64,
    other: u64,
}

/// Writes the chain at descriptor 0: header, SEGMENTS x `seg` bytes at DATA_START, status.
fn build_chain(blk: &Blk, kind: u32, seg: u32) {
    blk.write_header(kind, 0);
    blk.queue.set_desc(0, blk.header(), 16, DESC_F_NEXT, 1);
    let flags = if kind == T_IN { DESC_F_WRITE } else { 0 };
    for i in 1..=SEGMENTS {
        blk.queue.set_desc(i, DATA_START, seg, flags | DESC_F_NEXT, i + 1);
    }
    blk.queue.set_desc(SEGMENTS + 1, blk.status_addr(), 1, DESC_F_WRITE, 0);
}

/// Keeps every ring slot filled with head 0 for `ticks`, then waits for the rest.
fn flood(blk: &mut Blk, ticks: u64) -> Result<Tally, &'static str> {
    let mut t = Tally::default();
    let mut pushed = 0u64;
    let start = tsc();
    let mut last_answer = start;
    loop {
        let flooding = tsc().wrapping_sub(start) < ticks;
        while blk.queue.try_used().is_some() {
            t.answered += 1;
            last_answer = tsc();
            match dma::read_u8(blk.status_addr()) {
                S_OK => t.ok += 1,
                S_IOERR => t.ioerr += 1,
                _ => t.other += 1,
            }
        }
        if flooding && pushed - t.answered < u64::from(RING) {
            while pushed - t.answered < u64::from(RING) {
                blk.queue.push(0);
                pushed += 1;
            }
            blk.dev.notify(0);
        }
        if !flooding && pushed == t.answered {
            return Ok(t);
        }
        if blk.dev.status() & STATUS_NEEDS_RESET != 0 {
            return Err("needs-reset");
        }
        if tsc().wrapping_sub(last_answer) > TIMEOUT_TSC {
            return Err("no-answer");
        }
    }
}

fn fail(phase: &str, what: &str) {
    let line = ResultLine::fail(NAME.as_bytes());
    put_str(" phase=");
    put_str(phase);
    line.text(what).end();
}

pub fn run(boot: &BootInfo) {
    let num = |key: &[u8], default: u64| cmdline::param(boot.cmdline(), key).and_then(parse_dec).unwrap_or(default);
    let secs = num(b"probe.secs", 5).max(2);
    let half = secs * 1_000_000 * num(b"probe.tsc_mhz", 2000).max(1) / 2;
    let dev = match super::blk::open_first(boot) {
        Ok(blk) => blk.dev,
        Err(e) => return ResultLine::fail(NAME.as_bytes()).text(e).end(),
    };
    let mut blk = match Blk::open_sized(dev, RING) {
        Ok(blk) => blk,
        Err(e) => return ResultLine::fail(NAME.as_bytes()).text(e.as_str()).end(),
    };
    // virtio_blk_config.size_max (le32 at 8; seg_max follows), 64 KiB when not offered.
    let size_max = match blk.dev.config_u64(8) as u32 {
        0 => 64 * 1024,
        n => n.min(1 << 20),
    };
    put_str("probe: blk-flood flood-start\n");
    build_chain(&blk, T_IN, size_max);
    let max = match flood(&mut blk, half) {
        Ok(t) => t,
        Err(e) => return fail("max", e),
    };
    build_chain(&blk, T_OUT, 2 * size_max);
    let over = match flood(&mut blk, half) {
        Ok(t) => t,
        Err(e) => return fail("over", e),
    };
    put_str("probe: blk-flood flood-done\n");
    let good = max.answered > 0 && max.ok == max.answered && over.answered > 0 && over.ioerr == over.answered;
    ResultLine::start(NAME.as_bytes(), good)
        .dec("max_answered", max.answered)
        .dec("max_ok", max.ok)
        .dec("over_answered", over.answered)
        .dec("over_ioerr", over.ioerr)
        .dec("other", max.other + max.ioerr + over.other + over.ok)
        .end();
}
