//! `virtio-hostile`: transport-level abuse of every virtio-blk, virtio-net and virtio-rng
//! device present. Each case either must be refused (the status bit the driver asked for
//! stays clear) or must leave the device working: after every case a good request (a sector
//! read, a TX frame, 64 random bytes) must be answered, after a fresh initialisation when the
//! case broke the state machine. One line per case:
//! `probe: virtio-hostile case DEV CASE pass|FAIL SAW`, then
//! `probe: virtio-hostile ok cases=N` or `probe: virtio-hostile fail failed=N cases=N`.

use crate::serial::{put_str, ResultLine};
use crate::virtio::dma::{self, DATA_START};
use crate::virtio::queue::{Virtqueue, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::{self, MmioDevice, DEVICE_ID_BLOCK, DEVICE_ID_NET, DEVICE_ID_RNG, F_VERSION_1};
use crate::virtio::{STATUS_ACKNOWLEDGE as ACK, STATUS_DRIVER as DRIVER, STATUS_DRIVER_OK as DRIVER_OK};
use crate::virtio::{STATUS_FEATURES_OK as FEATURES_OK, STATUS_NEEDS_RESET};
use crate::zero_page::BootInfo;

pub const NAME: &str = "virtio-hostile";
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_DESC: u64 = 0x080;
const REG_CONFIG: u64 = 0x100;
const NOTIFIES: u32 = 100_000;
/// Far outside any guest RAM.
const OUTSIDE_RAM: u64 = 0x7fff_ffff_0000;
/// The second ring (virtio-net TX) and the data buffer.
const TX_RING: u64 = DATA_START + 0x10_0000;
const BUF: u64 = DATA_START;

/// A device under attack and the queue its good request uses.
struct Target {
    dev: MmioDevice,
    kind: &'static str,
    /// virtio-net's requests go to queue 1 (TX); the others use queue 0.
    queue_index: u32,
}

impl Target {
    /// Full initialisation; returns the request queue.
    fn bring_up(&self) -> Result<Virtqueue, &'static str> {
        self.dev.reset(); // before its rings are rewritten (see Virtqueue::new)
        let q0 = Virtqueue::new(&dma::queue_area(self.dev.index), 16);
        self.dev.negotiate(0, q0.setup).map_err(|e| e.as_str())?;
        if self.queue_index == 0 {
            self.dev.start().map_err(|e| e.as_str())?;
            return Ok(q0);
        }
        let area = dma::QueueArea { desc: TX_RING, avail: TX_RING + 0x1000, used: TX_RING + 0x2000, request: 0 };
        let q1 = Virtqueue::new(&area, 16);
        self.dev.setup_queue(1, q1.setup).map_err(|e| e.as_str())?;
        self.dev.start().map_err(|e| e.as_str())?;
        Ok(q1)
    }

    /// Puts the good request's chain at descriptor 0 (not published).
    fn build_request(&self, q: &Virtqueue) {
        match self.kind {
            "blk" => {
                let req = dma::queue_area(self.dev.index).request;
                dma::write_u32(req, 0);
                dma::write_u32(req + 4, 0);
                dma::write_u64(req + 8, 0);
                dma::write_u8(req + 0x100, 0xff);
                q.set_desc(0, req, 16, DESC_F_NEXT, 1);
                q.set_desc(1, BUF, 512, DESC_F_WRITE | DESC_F_NEXT, 2);
                q.set_desc(2, req + 0x100, 1, DESC_F_WRITE, 0);
            }
            "net" => {
                // Header, then a broadcast ARP-typed frame of 60 bytes.
                dma::zero(BUF, 12 + 60);
                dma::write_bytes(BUF + 12, &[0xff; 6]);
                dma::write_bytes(BUF + 12 + 12, &[0x08, 0x06]);
                q.set_desc(0, BUF, 12 + 60, 0, 0);
            }
            _ => q.set_desc(0, BUF, 64, DESC_F_WRITE, 0),
        }
    }

    /// One good request, answered as it should be.
    fn good_request(&self, q: &mut Virtqueue) -> bool {
        self.build_request(q);
        q.push(0);
        self.dev.notify(self.queue_index);
        let dev = self.dev;
        match q.wait_used(|| dev.status() & STATUS_NEEDS_RESET != 0) {
            Some((_, len)) => match self.kind {
                "blk" => dma::read_u8(dma::queue_area(self.dev.index).request + 0x100) == 0,
                "rng" => len > 0 && len <= 64,
                _ => true,
            },
            None => false,
        }
    }

    /// Initialises afresh and serves a good request.
    fn works_after_reinit(&self) -> bool {
        match self.bring_up() {
            Ok(mut q) => self.good_request(&mut q),
            Err(_) => false,
        }
    }

    fn begin_features(&self, high: u32) {
        self.dev.reset();
        self.dev.set_status(ACK);
        self.dev.set_status(ACK | DRIVER);
        self.dev.write32(REG_DRIVER_FEATURES_SEL, 0);
        self.dev.write32(REG_DRIVER_FEATURES, 0);
        self.dev.write32(REG_DRIVER_FEATURES_SEL, 1);
        self.dev.write32(REG_DRIVER_FEATURES, high);
    }
}

type Outcome = (bool, &'static str);

fn kept_working(t: &Target, q: &mut Virtqueue) -> Outcome {
    if t.good_request(q) {
        (true, "kept-working")
    } else if t.works_after_reinit() {
        (false, "stopped-until-reset")
    } else {
        (false, "broken")
    }
}

fn refused_then_works(t: &Target, refused: bool) -> Outcome {
    match (refused, t.works_after_reinit()) {
        (true, true) => (true, "refused-then-works"),
        (false, _) => (false, "accepted"),
        (true, false) => (false, "refused-but-broken"),
    }
}

fn notify_storm(t: &Target, index: u32) -> Outcome {
    let Ok(mut q) = t.bring_up() else { return (false, "init-failed") };
    for _ in 0..NOTIFIES {
        t.dev.notify(index);
    }
    kept_working(t, &mut q)
}

fn config_out_of_range(t: &Target) -> Outcome {
    let Ok(mut q) = t.bring_up() else { return (false, "init-failed") };
    let before = t.dev.read32(REG_CONFIG);
    for offset in [0x800u64, 0xefc] {
        let _ = t.dev.read32(REG_CONFIG + offset);
        t.dev.write32(REG_CONFIG + offset, 0xdead_beef);
    }
    t.dev.write32(REG_CONFIG, 0xffff_ffff);
    if t.dev.read32(REG_CONFIG) != before {
        return (false, "config-changed");
    }
    kept_working(t, &mut q)
}

fn driver_ok_early(t: &Target) -> Outcome {
    t.dev.reset();
    t.dev.set_status(ACK);
    t.dev.set_status(ACK | DRIVER);
    t.dev.set_status(ACK | DRIVER | DRIVER_OK);
    refused_then_works(t, t.dev.status() & DRIVER_OK == 0)
}

fn unoffered_feature(t: &Target, bit: u32) -> Outcome {
    if t.dev.device_features() & (1u64 << bit) != 0 {
        return (true, "offered-not-applicable");
    }
    let high = ((F_VERSION_1 | 1u64 << bit) >> 32) as u32;
    t.begin_features(high);
    if bit < 32 {
        t.dev.write32(REG_DRIVER_FEATURES_SEL, 0);
        t.dev.write32(REG_DRIVER_FEATURES, 1 << bit);
    }
    t.dev.set_status(ACK | DRIVER | FEATURES_OK);
    refused_then_works(t, t.dev.status() & FEATURES_OK == 0)
}

fn queue_setup_after_driver_ok(t: &Target) -> Outcome {
    let Ok(mut q) = t.bring_up() else { return (false, "init-failed") };
    t.dev.write32(REG_QUEUE_SEL, t.queue_index);
    t.dev.write32(REG_QUEUE_NUM, 4);
    t.dev.write32(REG_QUEUE_DESC, OUTSIDE_RAM as u32);
    t.dev.write32(REG_QUEUE_DESC + 4, (OUTSIDE_RAM >> 32) as u32);
    kept_working(t, &mut q)
}

fn reset_mid_io(t: &Target) -> Outcome {
    let Ok(mut q) = t.bring_up() else { return (false, "init-failed") };
    t.build_request(&q);
    for _ in 0..8 {
        q.push(0);
    }
    t.dev.notify(t.queue_index);
    t.dev.reset();
    if t.works_after_reinit() {
        (true, "works-after-reinit")
    } else {
        (false, "broken-after-reinit")
    }
}

struct Case {
    name: &'static str,
    run: fn(&Target) -> Outcome,
}

const CASES: &[Case] = &[
    Case { name: "notify-storm-empty-queue", run: |t| notify_storm(t, t.queue_index) },
    Case { name: "notify-storm-missing-queue", run: |t| notify_storm(t, 7) },
    Case { name: "config-out-of-range", run: config_out_of_range },
    Case { name: "driver-ok-before-features-ok", run: driver_ok_early },
    Case { name: "features-ok-bit-63", run: |t| unoffered_feature(t, 63) },
    Case { name: "features-ok-indirect-desc", run: |t| unoffered_feature(t, 28) },
    Case { name: "features-ok-packed-ring", run: |t| unoffered_feature(t, 34) },
    Case { name: "queue-setup-after-driver-ok", run: queue_setup_after_driver_ok },
    Case { name: "reset-mid-io", run: reset_mid_io },
];

pub fn run(boot: &BootInfo) {
    if !dma::available(boot) {
        return ResultLine::fail(NAME.as_bytes()).text("no-ram-for-dma").end();
    }
    let (mut cases, mut failed) = (0u64, 0u64);
    for (id, kind, queue_index) in [(DEVICE_ID_BLOCK, "blk", 0), (DEVICE_ID_NET, "net", 1), (DEVICE_ID_RNG, "rng", 0)] {
        let Some(dev) = virtio::find(boot, id) else { continue };
        let target = Target { dev, kind, queue_index };
        for case in CASES {
            let (pass, saw) = (case.run)(&target);
            cases += 1;
            failed += u64::from(!pass);
            put_str("probe: virtio-hostile case ");
            put_str(kind);
            put_str(" ");
            put_str(case.name);
            put_str(if pass { " pass " } else { " FAIL " });
            put_str(saw);
            put_str("\n");
        }
        target.dev.reset();
    }
    if cases == 0 || failed > 0 {
        return ResultLine::fail(NAME.as_bytes()).dec("failed", failed).dec("cases", cases).end();
    }
    ResultLine::ok(NAME.as_bytes()).dec("cases", cases).end();
}
