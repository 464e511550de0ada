//! `rng`: read `probe.rng_bytes=N` bytes (default 4096) from virtio-rng, 4 KiB per request,
//! count the distinct byte values of the first 4 KiB, and print the CRC-32 of all of them (two
//! VMs that print the same one got the same bytes).
//! `probe: rng ok bytes=4096 distinct=N crc32=XXXXXXXX`

use crate::cmdline;
use crate::crc32::Crc32;
use crate::serial::put_str;
use crate::serial::ResultLine;
use crate::virtio::dma::{self, DATA_START};
use crate::virtio::queue::{Virtqueue, DESC_F_WRITE};
use crate::virtio::{self, DEVICE_ID_RNG};
use crate::zero_page::BootInfo;

use super::blk::put_hex32;

pub const NAME: &str = "rng";
const REQUEST: u32 = 4096;

fn fail(what: &str) {
    ResultLine::fail(NAME.as_bytes()).text(what).end();
}

fn parse_dec(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 12 {
        return None;
    }
    text.iter().try_fold(0u64, |acc, &c| Some(acc * 10 + u64::from((c as char).to_digit(10)?)))
}

pub fn run(boot: &BootInfo) {
    let total = cmdline::param(boot.cmdline(), b"probe.rng_bytes").and_then(parse_dec).unwrap_or(4096);
    if !dma::available(boot) {
        return fail("no-ram-for-dma");
    }
    let Some(dev) = virtio::find(boot, DEVICE_ID_RNG) else {
        return fail("no-virtio-rng-device");
    };
    dev.reset(); // before its rings are rewritten (see Virtqueue::new)
    let mut queue = Virtqueue::new(&dma::queue_area(dev.index), 16);
    if let Err(e) = dev.negotiate(0, queue.setup).and_then(|_| dev.start()) {
        return fail(e.as_str());
    }
    let mut distinct = [false; 256];
    let mut crc = Crc32::new();
    let mut got = 0u64;
    while got < total {
        let want = REQUEST.min((total - got) as u32);
        dma::zero(DATA_START, u64::from(want));
        queue.set_desc(0, DATA_START, want, DESC_F_WRITE, 0);
        queue.push(0);
        dev.notify(0);
        let Some((_, len)) = queue.wait_used(|| false) else {
            return fail("timeout");
        };
        if len == 0 || len > want {
            return ResultLine::fail(NAME.as_bytes()).dec("bad_used_len", u64::from(len)).end();
        }
        crc.update(dma::slice(DATA_START, len as usize));
        if got < 4096 {
            for &b in dma::slice(DATA_START, len as usize) {
                distinct[usize::from(b)] = true;
            }
        }
        got += u64::from(len);
    }
    let count = distinct.iter().filter(|&&d| d).count() as u64;
    let line = ResultLine::ok(NAME.as_bytes()).dec("bytes", got).dec("distinct", count);
    put_str(" crc32=");
    put_hex32(crc.finish());
    line.end();
}
