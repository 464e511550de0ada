//! `balloon-report`: free page reporting on virtio-balloon (VIRTIO_BALLOON_F_PAGE_REPORTING,
//! its reporting queue is queue 2 without statistics). Fills 16 MiB from guest-physical 32 MiB
//! (`probe: balloon-report filled`), waits for the host to change the target (its signal that
//! it measured), reports the 16 MiB as free in one request of 8 device-writable 2 MiB buffers,
//! then two malformed requests (a device-readable buffer, a buffer not 4 KiB aligned), each
//! answered. Prints `probe: balloon-report ok reported=16777216` and waits for another target
//! change before powering off.

use crate::serial::ResultLine;
use crate::virtio::dma::{self, QueueArea, DATA_START};
use crate::virtio::queue::{Virtqueue, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio;
use crate::zero_page::BootInfo;

use super::balloon::{wait_target, CONFIG, DEVICE_ID_BALLOON, FILL_BASE};

pub const NAME: &str = "balloon-report";
const F_PAGE_REPORTING: u64 = 1 << 5;
const BLOCK: u64 = 2 << 20;
const BLOCKS: u64 = 8;

fn fail(what: &str) {
    ResultLine::fail(NAME.as_bytes()).text(what).end();
}

fn fill() {
    let mut addr = FILL_BASE;
    while addr < FILL_BASE + BLOCK * BLOCKS {
        // SAFETY: [32 MiB, 48 MiB) is RAM below 1 GiB (identity-mapped by boot.rs) above the
        // probe image, its stacks, page tables and DMA window; nothing else uses it.
        unsafe { core::ptr::write_volatile(addr as *mut u64, addr | 1) };
        addr += 8;
    }
}

pub fn run(boot: &BootInfo) {
    if !dma::available(boot) || !boot.e820.is_usable(FILL_BASE, FILL_BASE + BLOCK * BLOCKS) {
        return fail("no-ram");
    }
    let Some(dev) = virtio::find(boot, DEVICE_ID_BALLOON) else {
        return fail("no-virtio-balloon-device");
    };
    dev.reset();
    let inflate = Virtqueue::new(&dma::queue_area(dev.index), 16);
    let area = |base: u64| QueueArea { desc: base, avail: base + 0x1000, used: base + 0x2000, request: base + 0x3000 };
    let deflate = Virtqueue::new(&area(DATA_START + 0x30_0000), 16);
    let mut report = Virtqueue::new(&area(DATA_START + 0x34_0000), 16);
    let started = dev
        .negotiate(F_PAGE_REPORTING, inflate.setup)
        .and_then(|features| match features & F_PAGE_REPORTING {
            0 => Err(virtio::InitError::FeaturesRefused),
            _ => Ok(()),
        })
        .and_then(|_| dev.setup_queue(1, deflate.setup))
        .and_then(|_| dev.setup_queue(2, report.setup))
        .and_then(|_| dev.start());
    if let Err(e) = started {
        return fail(e.as_str());
    }
    fill();
    ResultLine::ok(NAME.as_bytes()).text("filled").end();
    let Some(target) = wait_target(&dev, dev.read32(CONFIG)) else {
        return fail("no-target");
    };
    for i in 0..BLOCKS {
        let last = i + 1 == BLOCKS;
        let flags = DESC_F_WRITE | if last { 0 } else { DESC_F_NEXT };
        report.set_desc(i as u16, FILL_BASE + i * BLOCK, BLOCK as u32, flags, (i + 1) as u16);
    }
    report.push(0);
    dev.notify(2);
    if report.wait_used(|| false).is_none() {
        return fail("report-timeout");
    }
    // Malformed: a device-readable buffer, then one not 4 KiB aligned.
    for (addr, flags) in [(FILL_BASE, 0), (FILL_BASE + 0x800, DESC_F_WRITE)] {
        report.set_desc(0, addr, 0x1000, flags, 0);
        report.push(0);
        dev.notify(2);
        if report.wait_used(|| false).is_none() {
            return fail("malformed-report-timeout");
        }
    }
    ResultLine::ok(NAME.as_bytes()).dec("reported", BLOCK * BLOCKS).end();
    if wait_target(&dev, target).is_none() {
        fail("no-second-target");
    }
}
