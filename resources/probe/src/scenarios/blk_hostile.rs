//! `blk-hostile`: malformed requests sent to the first virtio-blk device from inside the VM.
//! Each must get VIRTIO_BLK_S_IOERR in its status byte, or put the device in
//! DEVICE_NEEDS_RESET (when the queue itself is broken); after each case, a good read must
//! work again (after a reset for the second kind). The VMM must stay up throughout.
//! `probe: blk-hostile ok cases=N ioerr=A reset=B`, or `fail case=NAME got=...`.

use crate::serial::{put_str, ResultLine};
use crate::virtio::blk::{Blk, BlkError, S_IOERR, SECTOR, T_IN, T_OUT};
use crate::virtio::dma::DATA_START;
use crate::virtio::queue::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::{tsc, MmioDevice, STATUS_NEEDS_RESET, TIMEOUT_TSC};
use crate::zero_page::BootInfo;

pub const NAME: &str = "blk-hostile";

/// Far outside any guest RAM (128 TiB - 64 KiB).
const OUTSIDE_RAM: u64 = 0x7fff_ffff_0000;

#[derive(Clone, Copy, PartialEq)]
enum Expect {
    IoErr,
    Reset,
}

struct Case {
    name: &'static str,
    expect: Expect,
    /// Sets up descriptors and the available ring (and notifies, for the ring cases).
    build: fn(&mut Blk),
}

/// header -> data (addr, len, flags) -> status, at descriptors 0, 1, 2, published.
fn three(blk: &mut Blk, kind: u32, sector: u64, header_len: u32, data: (u64, u32, u16)) {
    blk.write_header(kind, sector);
    blk.queue.set_desc(0, blk.header(), header_len, DESC_F_NEXT, 1);
    blk.queue.set_desc(1, data.0, data.1, data.2 | DESC_F_NEXT, 2);
    blk.queue.set_desc(2, blk.status_addr(), 1, DESC_F_WRITE, 0);
    blk.queue.push(0);
}

const CASES: &[Case] = &[
    Case { name: "addr-outside-ram", expect: Expect::IoErr, build: |b| three(b, T_IN, 0, 16, (OUTSIDE_RAM, 512, DESC_F_WRITE)) },
    Case { name: "zero-length", expect: Expect::IoErr, build: |b| three(b, T_IN, 0, 16, (DATA_START, 0, DESC_F_WRITE)) },
    Case { name: "read-into-readonly-buffer", expect: Expect::IoErr, build: |b| three(b, T_IN, 0, 16, (DATA_START, 512, 0)) },
    Case { name: "write-from-writable-buffer", expect: Expect::IoErr, build: |b| three(b, T_OUT, 0, 16, (DATA_START, 512, DESC_F_WRITE)) },
    Case { name: "short-header", expect: Expect::IoErr, build: |b| three(b, T_IN, 0, 8, (DATA_START, 512, DESC_F_WRITE)) },
    Case { name: "length-not-sectors", expect: Expect::IoErr, build: |b| three(b, T_IN, 0, 16, (DATA_START, 100, DESC_F_WRITE)) },
    Case { name: "sector-past-end", expect: Expect::IoErr, build: |b| { let s = b.sectors; three(b, T_IN, s, 16, (DATA_START, 512, DESC_F_WRITE)) } },
    Case { name: "sector-overflow", expect: Expect::IoErr, build: |b| three(b, T_OUT, u64::MAX / 256, 16, (DATA_START, 512, 0)) },
    Case {
        name: "chain-loop",
        expect: Expect::Reset,
        build: |b| {
            b.write_header(T_IN, 0);
            b.queue.set_desc(0, b.header(), 16, DESC_F_NEXT, 1);
            b.queue.set_desc(1, DATA_START, 512, DESC_F_WRITE | DESC_F_NEXT, 0);
            b.queue.push(0);
        },
    },
    Case {
        name: "next-out-of-range",
        expect: Expect::Reset,
        build: |b| {
            b.write_header(T_IN, 0);
            b.queue.set_desc(0, b.header(), 16, DESC_F_NEXT, 200);
            b.queue.push(0);
        },
    },
    Case {
        name: "no-status-byte",
        expect: Expect::Reset,
        build: |b| {
            b.write_header(T_OUT, 0);
            b.queue.set_desc(0, b.header(), 16, DESC_F_NEXT, 1);
            b.queue.set_desc(1, DATA_START, 512, 0, 0);
            b.queue.push(0);
        },
    },
    Case {
        name: "indirect",
        expect: Expect::Reset,
        build: |b| {
            b.queue.set_desc(0, DATA_START, 64, DESC_F_INDIRECT, 0);
            b.queue.push(0);
        },
    },
    Case {
        name: "avail-idx-jump",
        expect: Expect::Reset,
        build: |b| {
            b.write_header(T_IN, 0);
            b.queue.set_desc(0, b.header(), 16, DESC_F_NEXT, 1);
            b.queue.set_desc(1, b.status_addr(), 1, DESC_F_WRITE, 0);
            b.queue.publish(b.queue.avail_idx().wrapping_add(100));
        },
    },
    Case {
        name: "head-out-of-range",
        expect: Expect::Reset,
        build: |b| {
            b.queue.set_avail_slot(300);
            b.queue.publish(b.queue.avail_idx().wrapping_add(1));
        },
    },
];

enum Outcome {
    Status(u8),
    NeedsReset,
    Timeout,
}

fn needs_reset(dev: &MmioDevice) -> bool {
    dev.status() & STATUS_NEEDS_RESET != 0
}

fn wait_outcome(blk: &mut Blk) -> Outcome {
    blk.dev.notify(0);
    let dev = blk.dev;
    match blk.queue.wait_used(|| needs_reset(&dev)) {
        Some(_) => Outcome::Status(crate::virtio::dma::read_u8(blk.status_addr())),
        None if needs_reset(&dev) => Outcome::NeedsReset,
        None => Outcome::Timeout,
    }
}

/// The rings outside guest RAM: the device refuses DRIVER_OK with NEEDS_RESET.
fn rings_outside_ram(dev: MmioDevice) -> bool {
    let area = crate::virtio::dma::queue_area(dev.index);
    dev.reset(); // before its rings are rewritten (see Virtqueue::new)
    let mut setup = crate::virtio::queue::Virtqueue::new(&area, 16).setup;
    setup.desc = OUTSIDE_RAM;
    if dev.negotiate(0, setup).is_err() {
        return false;
    }
    let _ = dev.start();
    let start = tsc();
    while !needs_reset(&dev) {
        if tsc().wrapping_sub(start) > TIMEOUT_TSC {
            return false;
        }
    }
    true
}

fn good_read(blk: &mut Blk) -> Result<(), BlkError> {
    blk.read(0, DATA_START, SECTOR as u32)
}

fn fail_case(case: &str, got: &str) {
    let line = ResultLine::fail(NAME.as_bytes());
    put_str(" case=");
    put_str(case);
    put_str(" got=");
    put_str(got);
    line.end();
}

pub fn run(boot: &BootInfo) {
    let mut blk = match super::blk::open_first(boot) {
        Ok(blk) => blk,
        Err(e) => return ResultLine::fail(NAME.as_bytes()).text(e).end(),
    };
    let dev = blk.dev;
    let (mut ioerr, mut reset) = (0, 0);
    for case in CASES {
        (case.build)(&mut blk);
        let outcome = wait_outcome(&mut blk);
        match (case.expect, outcome) {
            (Expect::IoErr, Outcome::Status(S_IOERR)) => ioerr += 1,
            (Expect::Reset, Outcome::NeedsReset) => reset += 1,
            (_, Outcome::Status(_)) => return fail_case(case.name, "other-status"),
            (_, Outcome::NeedsReset) => return fail_case(case.name, "needs-reset"),
            (_, Outcome::Timeout) => return fail_case(case.name, "no-answer"),
        }
        if case.expect == Expect::Reset {
            blk = match Blk::open(dev) {
                Ok(blk) => blk,
                Err(e) => return fail_case(case.name, e.as_str()),
            };
        }
        if let Err(e) = good_read(&mut blk) {
            return fail_case(case.name, e.as_str());
        }
    }
    if !rings_outside_ram(dev) {
        return fail_case("rings-outside-ram", "activated");
    }
    reset += 1;
    blk = match Blk::open(dev) {
        Ok(blk) => blk,
        Err(e) => return fail_case("rings-outside-ram", e.as_str()),
    };
    if let Err(e) = good_read(&mut blk) {
        return fail_case("rings-outside-ram", e.as_str());
    }
    ResultLine::ok(NAME.as_bytes())
        .dec("cases", (CASES.len() + 1) as u64)
        .dec("ioerr", ioerr)
        .dec("reset", reset)
        .end();
}
