//! `mrg-hostile`: mergeable RX buffers (VIRTIO_NET_F_MRG_RXBUF) against the chains a driver
//! gets wrong. The host keeps 104-byte frames (12-byte header, 42 bytes of headers, a 50-byte
//! UDP payload starting `mrg-rx-from-the-host`) coming into the tap. Cases, in order, on one
//! RX queue of 16 (a refused buffer must stay unwritten, the device must never need a reset):
//! - `spread`: three 40-byte buffers take one frame: used 40, 40, 24, num_buffers 3, whole;
//! - `too-few`: one 40-byte buffer alone is not used; two more: the frame whole in the three;
//! - `header-does-not-fit`, `zero-length`, `write-then-read`, `read-then-write`: an 8-byte
//!   buffer (less than the header), a zero-length one, a device-writable descriptor followed
//!   by a device-readable one, the reverse: used with length 0, then a frame in a 2 KiB buffer;
//! - `held-then-bad`: a 40-byte buffer, an 8-byte one, three 40-byte ones: the first two used
//!   with length 0 (the held buffer comes back unused), the frame whole in the last three.
//!
//! One line per case: `probe: mrg-hostile case CASE pass|FAIL`, then
//! `probe: mrg-hostile ok cases=N` or `fail failed=N cases=N`.

use crate::serial::{put_dec, put_str, ResultLine};
use crate::virtio::dma::{self, DATA_START};
use crate::virtio::net::{F_MAC, F_MRG_RXBUF, HDR};
use crate::virtio::queue::{Virtqueue, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::{self, MmioDevice, DEVICE_ID_NET, STATUS_NEEDS_RESET};
use crate::zero_page::BootInfo;

pub const NAME: &str = "mrg-hostile";

const SIZE: u16 = 16;
/// The TX rings (the RX rings use the device's queue area).
const TX_RINGS: u64 = DATA_START + 0x3_0000;
/// Buffer of descriptor i: BUFS + i * 4 KiB.
const BUFS: u64 = DATA_START + 0x4_0000;
const FRAME: u32 = 104;
const SMALL: u32 = 40;
const BIG: u32 = 2048;
const CANARY: u8 = 0xa5;
const MARKER: &[u8] = b"mrg-rx-from-the-host";

fn buf(i: u16) -> u64 {
    BUFS + u64::from(i) * 0x1000
}

struct Rx {
    dev: MmioDevice,
    q: Virtqueue,
    /// The next free pair of descriptors.
    next: u16,
}

impl Rx {
    /// Two descriptors for the next chain, their buffers filled with the canary.
    fn slot(&mut self) -> u16 {
        let i = self.next;
        self.next = (self.next + 2) % SIZE;
        for b in [i, i + 1] {
            for k in 0..0x1000 {
                dma::write_u8(buf(b) + k, CANARY);
            }
        }
        i
    }

    /// Posts a one-descriptor chain of `len` bytes with `flags`; returns its head.
    fn post(&mut self, len: u32, flags: u16) -> u16 {
        let i = self.slot();
        self.q.set_desc(i, buf(i), len, flags, 0);
        self.q.push(i);
        i
    }

    /// Posts a two-descriptor chain, `first` then `second` flags, 64 bytes each.
    fn post_two(&mut self, first: u16, second: u16) -> u16 {
        let i = self.slot();
        self.q.set_desc(i, buf(i), 64, first | DESC_F_NEXT, i + 1);
        self.q.set_desc(i + 1, buf(i + 1), 64, second, 0);
        self.q.push(i);
        i
    }

    fn kick(&self) {
        self.dev.notify(0);
    }

    /// The next used element must be `head` with `len` bytes (else it is printed).
    fn used_is(&mut self, head: u16, len: u32) -> bool {
        let dev = self.dev;
        let give_up = || dev.status() & STATUS_NEEDS_RESET != 0;
        let saw = self.q.wait_used(give_up);
        if saw == Some((u32::from(head), len)) {
            return true;
        }
        put_str("probe: mrg-hostile wanted ");
        put_dec(u64::from(head));
        put_str("/");
        put_dec(u64::from(len));
        put_str(" saw ");
        match saw {
            Some((id, n)) => {
                put_dec(u64::from(id));
                put_str("/");
                put_dec(u64::from(n));
            }
            None => put_str("nothing"),
        }
        put_str("\n");
        false
    }

    /// The frame in `heads` (used in order, `lens` bytes each) is whole: num_buffers and the
    /// payload's marker.
    fn frame_is(&mut self, heads: &[u16], lens: &[u32]) -> bool {
        let mut ok = true;
        let mut frame = [0u8; FRAME as usize];
        let mut at = 0usize;
        for (&h, &len) in heads.iter().zip(lens) {
            ok &= self.used_is(h, len);
            let n = (len as usize).min(frame.len() - at);
            frame[at..at + n].copy_from_slice(dma::slice(buf(h), n));
            at += n;
        }
        let count = u16::from_le_bytes([frame[10], frame[11]]);
        ok && at == FRAME as usize
            && usize::from(count) == heads.len()
            && frame[HDR + 42..].starts_with(MARKER)
    }

    fn untouched(head: u16) -> bool {
        dma::slice(buf(head), 64).iter().all(|&b| b == CANARY)
    }
}

fn spread(rx: &mut Rx) -> bool {
    let h: [u16; 3] = core::array::from_fn(|_| rx.post(SMALL, DESC_F_WRITE));
    rx.kick();
    rx.frame_is(&h, &[SMALL, SMALL, FRAME - 2 * SMALL])
}

fn too_few(rx: &mut Rx) -> bool {
    let first = rx.post(SMALL, DESC_F_WRITE);
    rx.kick();
    // Not waited for: whenever the device looks, one buffer cannot take a frame.
    let alone = rx.q.try_used().is_none();
    let rest: [u16; 2] = core::array::from_fn(|_| rx.post(SMALL, DESC_F_WRITE));
    rx.kick();
    alone && rx.frame_is(&[first, rest[0], rest[1]], &[SMALL, SMALL, FRAME - 2 * SMALL])
}

/// `bad` (already posted) is used with length 0 and left unwritten; a frame then arrives.
fn refused_then_good(rx: &mut Rx, bad: u16) -> bool {
    let good = rx.post(BIG, DESC_F_WRITE);
    rx.kick();
    rx.used_is(bad, 0) && Rx::untouched(bad) && rx.frame_is(&[good], &[FRAME])
}

fn held_then_bad(rx: &mut Rx) -> bool {
    let held = rx.post(SMALL, DESC_F_WRITE);
    let bad = rx.post(8, DESC_F_WRITE);
    let h: [u16; 3] = core::array::from_fn(|_| rx.post(SMALL, DESC_F_WRITE));
    rx.kick();
    rx.used_is(held, 0)
        && rx.used_is(bad, 0)
        && Rx::untouched(bad)
        && rx.frame_is(&h, &[SMALL, SMALL, FRAME - 2 * SMALL])
}

fn open(dev: MmioDevice) -> Result<Rx, &'static str> {
    // Reset first: the rings of a live device are not zeroed under it (see Virtqueue::new).
    dev.reset();
    let q = Virtqueue::new(&dma::queue_area(dev.index), SIZE);
    let tx_area = dma::QueueArea { desc: TX_RINGS, avail: TX_RINGS + 0x1000, used: TX_RINGS + 0x2000, request: 0 };
    let tx = Virtqueue::new(&tx_area, SIZE);
    let features = dev.negotiate(F_MAC | F_MRG_RXBUF, q.setup).map_err(|e| e.as_str())?;
    if features & F_MRG_RXBUF == 0 {
        return Err("no-mrg-rxbuf");
    }
    dev.setup_queue(1, tx.setup).map_err(|e| e.as_str())?;
    dev.start().map_err(|e| e.as_str())?;
    Ok(Rx { dev, q, next: 0 })
}

pub fn run(boot: &BootInfo) {
    if !dma::available(boot) {
        return ResultLine::fail(NAME.as_bytes()).text("no-ram-for-dma").end();
    }
    let Some(dev) = virtio::find(boot, DEVICE_ID_NET) else {
        return ResultLine::fail(NAME.as_bytes()).text("no-net").end();
    };
    let mut rx = match open(dev) {
        Ok(rx) => rx,
        Err(e) => return ResultLine::fail(NAME.as_bytes()).text(e).end(),
    };
    type Case = (&'static str, fn(&mut Rx) -> bool);
    let cases: [Case; 7] = [
        ("spread", spread),
        ("too-few", too_few),
        ("header-does-not-fit", |rx| {
            let bad = rx.post(8, DESC_F_WRITE);
            refused_then_good(rx, bad)
        }),
        ("zero-length", |rx| {
            let bad = rx.post(0, DESC_F_WRITE);
            refused_then_good(rx, bad)
        }),
        ("write-then-read", |rx| {
            let bad = rx.post_two(DESC_F_WRITE, 0);
            refused_then_good(rx, bad)
        }),
        ("read-then-write", |rx| {
            let bad = rx.post_two(0, DESC_F_WRITE);
            refused_then_good(rx, bad)
        }),
        ("held-then-bad", held_then_bad),
    ];
    let mut failed = 0u64;
    for (name, case) in cases {
        let pass = case(&mut rx) && dev.status() & STATUS_NEEDS_RESET == 0;
        failed += u64::from(!pass);
        put_str("probe: mrg-hostile case ");
        put_str(name);
        put_str(if pass { " pass\n" } else { " FAIL\n" });
    }
    dev.reset();
    let cases = cases.len() as u64;
    if failed > 0 {
        return ResultLine::fail(NAME.as_bytes()).dec("failed", failed).dec("cases", cases).end();
    }
    ResultLine::ok(NAME.as_bytes()).dec("cases", cases).end();
}
