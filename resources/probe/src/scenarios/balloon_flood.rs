//! `balloon-flood`: the "huge count" attack on virtio-balloon's inflate queue. One 64 KiB
//! descriptor holding 16,384 page numbers, none of them guest RAM (past its end), is put in
//! every slot of the 16-entry ring, notified, and refilled as the device answers, for
//! `probe.secs=` seconds (TSC time, `probe.tsc_mhz=`). The device reads at most 1,024 page
//! numbers of a request and a few thousand per kick; every page number is refused and counted.
//! Prints `probe: balloon-flood flood-start` and `probe: balloon-flood flood-done` around the
//! flood (the host measures in between), then `probe: balloon-flood ok answered=N`.

use crate::cmdline;
use crate::netstack::parse_dec;
use crate::serial::{put_str, ResultLine};
use crate::virtio::dma::{self, DATA_START};
use crate::virtio::{tsc, STATUS_NEEDS_RESET, TIMEOUT_TSC};
use crate::zero_page::BootInfo;

pub const NAME: &str = "balloon-flood";
const RING: u64 = 16;
const ARRAY_BYTES: u32 = 64 * 1024;

fn fail(what: &str) {
    ResultLine::fail(NAME.as_bytes()).text(what).end();
}

pub fn run(boot: &BootInfo) {
    let num = |key: &[u8], default: u64| cmdline::param(boot.cmdline(), key).and_then(parse_dec).unwrap_or(default);
    let ticks = num(b"probe.secs", 5).max(1) * 1_000_000 * num(b"probe.tsc_mhz", 2000).max(1);
    let (dev, mut inflate, _deflate) = match super::balloon::open(boot) {
        Ok(opened) => opened,
        Err(e) => return fail(e),
    };
    let ram_end = boot.e820.usable().map(|e| e.end()).max().unwrap_or(0);
    let first_bad = (ram_end >> 12) as u32 + 1;
    for i in 0..u64::from(ARRAY_BYTES / 4) {
        dma::write_u32(DATA_START + 4 * i, first_bad.wrapping_add(i as u32));
    }
    inflate.set_desc(0, DATA_START, ARRAY_BYTES, 0, 0);
    put_str("probe: balloon-flood flood-start\n");
    let (mut pushed, mut answered) = (0u64, 0u64);
    let start = tsc();
    let mut last_answer = start;
    loop {
        let flooding = tsc().wrapping_sub(start) < ticks;
        while inflate.try_used().is_some() {
            answered += 1;
            last_answer = tsc();
        }
        if flooding && pushed - answered < RING {
            while pushed - answered < RING {
                inflate.push(0);
                pushed += 1;
            }
            dev.notify(0);
        }
        if !flooding && pushed == answered {
            break;
        }
        if dev.status() & STATUS_NEEDS_RESET != 0 {
            return fail("needs-reset");
        }
        if tsc().wrapping_sub(last_answer) > TIMEOUT_TSC {
            return fail("no-answer");
        }
    }
    put_str("probe: balloon-flood flood-done\n");
    ResultLine::start(NAME.as_bytes(), answered > 0).dec("answered", answered).end();
}
