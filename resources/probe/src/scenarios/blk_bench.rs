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

/// `blk-iops`: small requests on the first virtio-blk disk, `probe.count` (default 20000)
/// requests of `probe.blk_kib` KiB (default 4, at most 64) per pass, `probe.blk_qd` requests
/// in flight (default 1, at most 32: posted together, then each completed one reposted, one
/// notification per batch), timed with the TSC (`probe.tsc_mhz`). Four passes: sequential
/// read, random read, sequential write, random write (the writes skipped on a read-only
/// drive). Random offsets are aligned to the request size and come from a xorshift64 PRNG
/// with a fixed seed, so every run and every VMM sees the same offsets. Per pass:
/// `probe: blk-iops PASS-start` and `probe: blk-iops PASS-done ops=N usecs=U` (PASS is
/// seqread, randread, seqwrite, randwrite), then `probe: blk-iops ok ops=N kib=K qd=Q`.
pub mod iops {
    use crate::cmdline;
    use crate::serial::{put_dec, put_str, ResultLine};
    use crate::virtio::blk::{Blk, BlkError, F_RO, S_OK, T_IN, T_OUT};
    use crate::virtio::dma::{self, DATA_START};
    use crate::virtio::queue::{DESC_F_NEXT, DESC_F_WRITE};
    use crate::virtio::tsc;
    use crate::zero_page::BootInfo;

    pub const NAME: &str = "blk-iops";
    const MAX_QD: u64 = 32;
    /// Three descriptors per request in flight.
    const QUEUE_SIZE: u16 = 128;

    fn num(boot: &BootInfo, key: &[u8], default: u64) -> u64 {
        cmdline::param(boot.cmdline(), key)
            .and_then(|v| v.iter().try_fold(0u64, |acc, &c| Some(acc * 10 + u64::from((c as char).to_digit(10)?))))
            .unwrap_or(default)
    }

    /// The request header and status byte of slot `s` in the request page.
    fn header(blk: &Blk, s: u16) -> u64 {
        blk.request + u64::from(s) * 32
    }

    struct Pass {
        random: bool,
        write: bool,
        /// Request size in sectors.
        sectors: u64,
        /// Requests the disk holds end to end.
        slots_on_disk: u64,
        next_seq: u64,
        rng: u64,
    }

    impl Pass {
        fn next_sector(&mut self) -> u64 {
            let slot = if self.random {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                self.rng % self.slots_on_disk
            } else {
                let s = self.next_seq % self.slots_on_disk;
                self.next_seq += 1;
                s
            };
            slot * self.sectors
        }

        /// Fills slot `s`'s descriptors and header for the next request and makes it available.
        fn post(&mut self, blk: &mut Blk, s: u16) {
            let h = header(blk, s);
            let sector = self.next_sector();
            dma::write_u32(h, if self.write { T_OUT } else { T_IN });
            dma::write_u32(h + 4, 0);
            dma::write_u64(h + 8, sector);
            dma::write_u8(h + 16, 0xff);
            let d = s * 3;
            let data = DATA_START + u64::from(s) * self.sectors * 512;
            let flags = if self.write { 0 } else { DESC_F_WRITE };
            blk.queue.set_desc(d, h, 16, DESC_F_NEXT, d + 1);
            blk.queue.set_desc(d + 1, data, (self.sectors * 512) as u32, flags | DESC_F_NEXT, d + 2);
            blk.queue.set_desc(d + 2, h + 16, 1, DESC_F_WRITE, 0);
            blk.queue.push(d);
        }
    }

    /// `ops` requests with `qd` in flight; returns the TSC ticks they took.
    fn run_pass(blk: &mut Blk, pass: &mut Pass, ops: u64, qd: u64) -> Result<u64, BlkError> {
        let start = tsc();
        let mut posted = 0;
        let mut done = 0;
        while posted < ops.min(qd) {
            pass.post(blk, posted as u16);
            posted += 1;
        }
        blk.dev.notify(0);
        while done < ops {
            let (id, _) = blk.queue.wait_used(|| false).ok_or(BlkError::Timeout)?;
            let mut completed = Some(id);
            let mut reposted = false;
            while let Some(id) = completed {
                let s = (id / 3) as u16;
                if id % 3 != 0 || u64::from(s) >= qd {
                    return Err(BlkError::Status(0xfe));
                }
                match dma::read_u8(header(blk, s) + 16) {
                    S_OK => {}
                    other => return Err(BlkError::Status(other)),
                }
                done += 1;
                if posted < ops {
                    pass.post(blk, s);
                    posted += 1;
                    reposted = true;
                }
                completed = blk.queue.try_used().map(|(id, _)| id);
            }
            if reposted {
                blk.dev.notify(0);
            }
        }
        Ok(tsc().wrapping_sub(start))
    }

    pub fn run(boot: &BootInfo) {
        let fail = |what: &str| ResultLine::fail(NAME.as_bytes()).text(what).end();
        if !dma::available(boot) {
            return fail("no-ram-for-dma");
        }
        let Some(dev) = crate::virtio::find(boot, crate::virtio::DEVICE_ID_BLOCK) else {
            return fail("no-virtio-blk-device");
        };
        let mut blk = match Blk::open_sized(dev, QUEUE_SIZE) {
            Ok(blk) => blk,
            Err(e) => return fail(e.as_str()),
        };
        let ops = num(boot, b"probe.count", 20000).max(1);
        let kib = num(boot, b"probe.blk_kib", 4).clamp(1, 64);
        let qd = num(boot, b"probe.blk_qd", 1).clamp(1, MAX_QD);
        let tsc_per_us = num(boot, b"probe.tsc_mhz", 2000).max(1);
        let sectors = kib * 2;
        let slots_on_disk = blk.sectors / sectors;
        if slots_on_disk == 0 {
            return fail("disk-too-small");
        }
        let passes: &[(&str, bool, bool)] = &[
            ("seqread", false, false),
            ("randread", true, false),
            ("seqwrite", false, true),
            ("randwrite", true, true),
        ];
        for &(name, random, write) in passes {
            if write && blk.features & F_RO != 0 {
                continue;
            }
            let mut pass =
                Pass { random, write, sectors, slots_on_disk, next_seq: 0, rng: 0x9e37_79b9_7f4a_7c15 };
            put_str("probe: blk-iops ");
            put_str(name);
            put_str("-start\n");
            let ticks = match run_pass(&mut blk, &mut pass, ops, qd) {
                Ok(t) => t,
                Err(e) => return fail(e.as_str()),
            };
            put_str("probe: blk-iops ");
            put_str(name);
            put_str("-done ops=");
            put_dec(ops);
            put_str(" usecs=");
            put_dec(ticks / tsc_per_us);
            put_str("\n");
        }
        ResultLine::ok(NAME.as_bytes()).dec("ops", ops).dec("kib", kib).dec("qd", qd).end();
    }
}
