//! `chain-hostile`: the malformed chains of `blk-hostile`, sent to virtio-rng, to the
//! virtio-net TX queue and to the virtio-net RX queue (the host keeps frames coming into the
//! tap, so the RX queue has something to fill). Each case must end with the chain used with
//! length 0 (`used0`), with DEVICE_NEEDS_RESET (`reset`), or, for the same head queued 16 times,
//! with 16 used entries (`used16`); after it (and a reset where one was needed) a good request
//! must work: entropy arrives, a frame is sent (payload `chains-tx-DEV-CASE`, judged on the
//! tap by the host), a frame from the host arrives. A refused buffer must stay unwritten.
//! One line per case: `probe: chain-hostile case DEV CASE pass|FAIL saw=.. good=ok|fail`, then
//! `probe: chain-hostile ok cases=N` or `fail failed=N cases=N`.

use crate::netstack::{self, BROADCAST, ETH, ETH_IPV4, IP, UDP};
use crate::serial::{put_str, ResultLine};
use crate::virtio::dma::{self, DATA_START};
use crate::virtio::net::{F_MAC, HDR};
use crate::virtio::queue::{Virtqueue, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::{self, MmioDevice, QueueSetup, DEVICE_ID_NET, DEVICE_ID_RNG, STATUS_NEEDS_RESET};
use crate::zero_page::BootInfo;

pub const NAME: &str = "chain-hostile";

const OUTSIDE_RAM: u64 = 0x7fff_ffff_0000;
const SIZE: u16 = 16;
/// The net TX rings (the RX rings use the device's queue area).
const TX_RINGS: u64 = DATA_START + 0x3_0000;
/// The buffer of the hostile chain.
const BUF: u64 = DATA_START + 0x4_0000;
/// The buffer of the good request.
const GOOD: u64 = DATA_START + 0x5_0000;
/// 64 KiB + header and more, for the oversized TX chain.
const BIG: u64 = DATA_START + 0x10_0000;
const BUF_LEN: u32 = 2048;
/// What a refused buffer is filled with first (it must still hold it afterwards).
const CANARY: u8 = 0xa5;
/// The largest TX chain the device takes (a 65,550-byte frame and its header).
const MAX_TX: u32 = 65_562;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Rng,
    Tx,
    Rx,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Rng => "rng",
            Self::Tx => "net-tx",
            Self::Rx => "net-rx",
        }
    }

    /// The flag of a buffer going the right way.
    fn flag(self) -> u16 {
        if self == Self::Tx { 0 } else { DESC_F_WRITE }
    }

    fn queue(self) -> u32 {
        if self == Self::Tx { 1 } else { 0 }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Expect {
    Used0,
    Reset,
    Many,
}

struct Case {
    name: &'static str,
    expect: Expect,
    /// Only for this kind (None: every kind).
    only: Option<Kind>,
    build: fn(&mut Virtqueue, Kind),
}

/// The hostile buffer: for TX a marked frame, else the canary.
fn fill_buf(kind: Kind, case: &str) -> u32 {
    if kind == Kind::Tx {
        return frame_at(BUF, "chains-bad-", case);
    }
    fill_canary();
    BUF_LEN
}

fn fill_canary() {
    // SAFETY: BUF..BUF + BUF_LEN lies in the DMA window.
    unsafe { core::ptr::write_bytes(BUF as *mut u8, CANARY, BUF_LEN as usize) };
}

fn canary_intact() -> bool {
    dma::slice(BUF, BUF_LEN as usize).iter().all(|&b| b == CANARY)
}

/// A UDP frame 10.0.0.2:7400 -> 10.0.0.1:7400 (broadcast MAC) with payload `PREFIX CASE`, its
/// zero header in front, at `addr`; returns the length with the header.
fn frame_at(addr: u64, prefix: &str, case: &str) -> u32 {
    // SAFETY: addr..addr + 2048 lies in the DMA window and nothing else uses it now.
    let buf = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, 2048) };
    buf[..HDR].fill(0);
    let f = &mut buf[HDR..];
    let payload = &mut f[ETH + IP + UDP..];
    let mut n = 0;
    for part in [prefix.as_bytes(), case.as_bytes()] {
        payload[n..n + part.len()].copy_from_slice(part);
        n += part.len();
    }
    netstack::eth(f, BROADCAST, [0x06, 0, 10, 0, 0, 2], ETH_IPV4);
    (HDR + netstack::udp(f, ([10, 0, 0, 2], 7400), ([10, 0, 0, 1], 7400), n)) as u32
}

fn one(q: &mut Virtqueue, addr: u64, len: u32, flags: u16) {
    q.set_desc(0, addr, len, flags, 0);
    q.push(0);
}

const CASES: &[Case] = &[
    Case { name: "addr-outside-ram", expect: Expect::Used0, only: None, build: |q, k| { let n = fill_buf(k, "addr-outside-ram"); one(q, OUTSIDE_RAM, n, k.flag()) } },
    Case { name: "zero-length", expect: Expect::Used0, only: None, build: |q, k| { fill_buf(k, "zero-length"); one(q, BUF, 0, k.flag()) } },
    Case { name: "wrong-direction", expect: Expect::Used0, only: None, build: |q, k| { let n = fill_buf(k, "wrong-direction"); one(q, BUF, n, k.flag() ^ DESC_F_WRITE) } },
    Case { name: "tx-runt-shorter-than-header", expect: Expect::Used0, only: Some(Kind::Tx), build: |q, k| { fill_buf(k, "runt"); one(q, BUF, (HDR - 4) as u32, 0) } },
    Case {
        name: "tx-over-64k-plus-header",
        expect: Expect::Used0,
        only: Some(Kind::Tx),
        build: |q, _| {
            frame_at(BIG, "chains-bad-", "over-64k");
            q.set_desc(0, BIG, 4096, DESC_F_NEXT, 1);
            q.set_desc(1, BIG + 4096, MAX_TX + 1 - 4096, 0, 0);
            q.push(0);
        },
    },
    Case { name: "rx-buffer-shorter-than-header", expect: Expect::Used0, only: Some(Kind::Rx), build: |q, k| { fill_buf(k, ""); one(q, BUF, (HDR - 4) as u32, DESC_F_WRITE) } },
    Case {
        name: "chain-loop",
        expect: Expect::Reset,
        only: None,
        build: |q, k| {
            fill_buf(k, "chain-loop");
            q.set_desc(0, BUF, 64, k.flag() | DESC_F_NEXT, 1);
            q.set_desc(1, BUF + 64, 64, k.flag() | DESC_F_NEXT, 0);
            q.push(0);
        },
    },
    Case {
        name: "chain-longer-than-queue",
        expect: Expect::Reset,
        only: None,
        build: |q, k| {
            fill_buf(k, "chain-longer-than-queue");
            for i in 0..SIZE {
                q.set_desc(i, BUF + u64::from(i) * 64, 64, k.flag() | DESC_F_NEXT, (i + 1) % SIZE);
            }
            q.push(0);
        },
    },
    Case {
        name: "next-out-of-range",
        expect: Expect::Reset,
        only: None,
        build: |q, k| {
            let n = fill_buf(k, "next-out-of-range");
            q.set_desc(0, BUF, n, k.flag() | DESC_F_NEXT, 200);
            q.push(0);
        },
    },
    Case { name: "indirect", expect: Expect::Reset, only: None, build: |q, k| { fill_buf(k, "indirect"); one(q, BUF, 64, DESC_F_INDIRECT) } },
    Case {
        name: "avail-idx-jump",
        expect: Expect::Reset,
        only: None,
        build: |q, k| {
            let n = fill_buf(k, "avail-idx-jump");
            q.set_desc(0, BUF, n, k.flag(), 0);
            q.set_avail_slot(0);
            q.publish(q.avail_idx().wrapping_add(100));
        },
    },
    Case {
        name: "head-out-of-range",
        expect: Expect::Reset,
        only: None,
        build: |q, _| {
            q.set_avail_slot(300);
            q.publish(q.avail_idx().wrapping_add(1));
        },
    },
    Case {
        name: "same-head-16x",
        expect: Expect::Many,
        only: None,
        build: |q, k| {
            let n = if k == Kind::Tx { frame_at(BUF, "chains-tx-", "same-head-16x") } else { BUF_LEN };
            q.set_desc(0, BUF, n, k.flag(), 0);
            for _ in 0..SIZE {
                q.push(0);
            }
        },
    },
];

struct Rig {
    dev: MmioDevice,
    kind: Kind,
    /// The queue under attack.
    q: Virtqueue,
}

/// Resets `dev` and brings it up with fresh queues; for net, the queue of `kind`.
fn open(dev: MmioDevice, kind: Kind) -> Result<Rig, &'static str> {
    let area = dma::queue_area(dev.index);
    // Reset first: zeroing the rings of a live device moves avail.idx back, a broken queue
    // the device counts if a late notification makes it look (see Virtqueue::new).
    dev.reset();
    let q0 = Virtqueue::new(&area, SIZE);
    if kind == Kind::Rng {
        dev.negotiate(0, q0.setup).and_then(|_| dev.start()).map_err(|e| e.as_str())?;
        return Ok(Rig { dev, kind, q: q0 });
    }
    let tx_area = dma::QueueArea { desc: TX_RINGS, avail: TX_RINGS + 0x1000, used: TX_RINGS + 0x2000, request: 0 };
    let q1 = Virtqueue::new(&tx_area, SIZE);
    let setup: QueueSetup = q1.setup;
    dev.negotiate(F_MAC, q0.setup).map_err(|e| e.as_str())?;
    dev.setup_queue(1, setup).map_err(|e| e.as_str())?;
    dev.start().map_err(|e| e.as_str())?;
    Ok(Rig { dev, kind, q: if kind == Kind::Tx { q1 } else { q0 } })
}

fn needs_reset(dev: &MmioDevice) -> bool {
    dev.status() & STATUS_NEEDS_RESET != 0
}

/// What the device did with the case: its name for the line, and whether it was expected.
fn outcome(rig: &mut Rig, expect: Expect) -> (&'static str, bool) {
    rig.dev.notify(rig.kind.queue());
    let dev = rig.dev;
    let wanted = if expect == Expect::Many { SIZE } else { 1 };
    let mut lens_ok = true;
    for i in 0..wanted {
        match rig.q.wait_used(|| needs_reset(&dev)) {
            Some((_, len)) => {
                lens_ok &= match (expect, rig.kind) {
                    (Expect::Many, Kind::Rng) => len > 0 && len <= BUF_LEN,
                    (Expect::Many, Kind::Rx) => len as usize > HDR && len <= BUF_LEN,
                    _ => len == 0,
                };
            }
            None if needs_reset(&dev) => return ("reset", expect == Expect::Reset && i == 0),
            None => return ("timeout", false),
        }
    }
    if needs_reset(&dev) {
        return ("used-then-reset", false);
    }
    // Nothing more comes (a second used entry would be a chain handled twice).
    let saw = match (expect, lens_ok) {
        (Expect::Many, true) => "used16",
        (Expect::Many, false) => "used16-bad-len",
        (_, true) => "used0",
        (_, false) => "used-nonzero",
    };
    (saw, expect != Expect::Reset && lens_ok && rig.q.try_used().is_none())
}

/// A good request on the queue under attack.
fn good(rig: &mut Rig, case: &str) -> bool {
    let (len, flags) = match rig.kind {
        Kind::Tx => (frame_at(GOOD, "chains-tx-", case), 0),
        _ => (BUF_LEN, DESC_F_WRITE),
    };
    dma::zero(GOOD, 16);
    rig.q.set_desc(0, GOOD, len, flags, 0);
    rig.q.push(0);
    rig.dev.notify(rig.kind.queue());
    match rig.q.wait_used(|| false) {
        Some((_, used)) => match rig.kind {
            Kind::Tx => used == 0,
            Kind::Rng => used > 0 && used <= BUF_LEN,
            Kind::Rx => used as usize > HDR && used <= BUF_LEN,
        },
        None => false,
    }
}

fn line(kind: Kind, case: &str, pass: bool, saw: &str, good_ok: bool) {
    put_str("probe: chain-hostile case ");
    put_str(kind.name());
    put_str(" ");
    put_str(case);
    put_str(if pass { " pass saw=" } else { " FAIL saw=" });
    put_str(saw);
    put_str(if good_ok { " good=ok\n" } else { " good=fail\n" });
}

pub fn run(boot: &BootInfo) {
    if !dma::available(boot) {
        return ResultLine::fail(NAME.as_bytes()).text("no-ram-for-dma").end();
    }
    let (Some(rng), Some(net)) = (virtio::find(boot, DEVICE_ID_RNG), virtio::find(boot, DEVICE_ID_NET)) else {
        return ResultLine::fail(NAME.as_bytes()).text("needs-rng-and-net").end();
    };
    let (mut cases, mut failed) = (0u64, 0u64);
    for (dev, kind) in [(rng, Kind::Rng), (net, Kind::Tx), (net, Kind::Rx)] {
        let mut rig = match open(dev, kind) {
            Ok(rig) => rig,
            Err(e) => return ResultLine::fail(NAME.as_bytes()).text(kind.name()).text(e).end(),
        };
        // A good request first: the device works before it is attacked.
        if !good(&mut rig, "baseline") {
            return ResultLine::fail(NAME.as_bytes()).text(kind.name()).text("baseline").end();
        }
        for case in CASES.iter().filter(|c| c.only.is_none_or(|k| k == kind)) {
            (case.build)(&mut rig.q, kind);
            let (saw, mut pass) = outcome(&mut rig, case.expect);
            if saw == "used0" && kind != Kind::Tx && case.name != "addr-outside-ram" {
                pass &= canary_intact();
            }
            if saw == "reset" {
                rig = match open(dev, kind) {
                    Ok(rig) => rig,
                    Err(e) => return ResultLine::fail(NAME.as_bytes()).text(case.name).text(e).end(),
                };
            }
            let good_ok = good(&mut rig, case.name);
            cases += 1;
            failed += u64::from(!(pass && good_ok));
            line(kind, case.name, pass, saw, good_ok);
        }
        if kind == Kind::Rx {
            // The host stops capturing at this frame.
            let tx = open(dev, Kind::Tx);
            if let Ok(mut tx) = tx {
                let _ = good(&mut tx, "done");
            }
        }
    }
    rng.reset();
    net.reset();
    if failed > 0 {
        return ResultLine::fail(NAME.as_bytes()).dec("failed", failed).dec("cases", cases).end();
    }
    ResultLine::ok(NAME.as_bytes()).dec("cases", cases).end();
}
