//! `balloon-hint`: free page hinting on virtio-balloon (VIRTIO_BALLOON_F_FREE_PAGE_HINT only,
//! so its hinting queue is queue 2). Fills 16 MiB from guest-physical 32 MiB, hints 2 MiB of it
//! before any run (to be dropped), prints `probe: balloon-hint ok filled`, waits for the host to start a run (config space
//! `free_page_hint_cmd_id` 2 or more, by `PATCH /balloon/hinting/start`), answers with that
//! id, hints the 16 MiB in 8 device-writable 2 MiB buffers (one per request, as Linux sends
//! them), then what a hostile driver would: a buffer in the MMIO gap, one past RAM, one not
//! 4 KiB aligned, a device-readable 8-byte buffer; then the id STOP (0), waits for the host
//! to end the run (DONE, 1), and hints 2 MiB of the ended run (to be dropped). Prints `probe: balloon-hint ok hinted=16777216 done=1` and waits
//! for a target change (the host measured) before powering off.

use crate::serial::ResultLine;
use crate::virtio::dma::{self, QueueArea, DATA_START};
use crate::virtio::queue::{Virtqueue, DESC_F_WRITE};
use crate::virtio::{self, tsc, TIMEOUT_TSC};
use crate::zero_page::BootInfo;

use super::balloon::{wait_target, CONFIG, DEVICE_ID_BALLOON, FILL_BASE};

pub const NAME: &str = "balloon-hint";
const F_FREE_PAGE_HINT: u64 = 1 << 3;
/// Config space `free_page_hint_cmd_id`.
const CMD_ID: u64 = CONFIG + 8;
const STOP: u32 = 0;
const DONE: u32 = 1;
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

/// Waits until `free_page_hint_cmd_id` satisfies `done`; None after about 30 s.
fn wait_cmd(dev: &virtio::MmioDevice, done: impl Fn(u32) -> bool) -> Option<u32> {
    let start = tsc();
    loop {
        let id = dev.read32(CMD_ID);
        if done(id) {
            return Some(id);
        }
        if tsc().wrapping_sub(start) > 3 * TIMEOUT_TSC {
            return None;
        }
        core::hint::spin_loop();
    }
}

/// Sends one buffer as one request on queue 2 and waits for it.
fn send(dev: &virtio::MmioDevice, q: &mut Virtqueue, addr: u64, len: u32, flags: u16) -> bool {
    q.set_desc(0, addr, len, flags, 0);
    q.push(0);
    dev.notify(2);
    q.wait_used(|| false).is_some()
}

/// Sends command id `id` (a device-readable 4-byte buffer).
fn send_id(dev: &virtio::MmioDevice, q: &mut Virtqueue, id: u32) -> bool {
    dma::write_u32(DATA_START, id);
    send(dev, q, DATA_START, 4, 0)
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
    let mut hint = Virtqueue::new(&area(DATA_START + 0x34_0000), 16);
    let started = dev
        .negotiate(F_FREE_PAGE_HINT, inflate.setup)
        .and_then(|features| match features & F_FREE_PAGE_HINT {
            0 => Err(virtio::InitError::FeaturesRefused),
            _ => Ok(()),
        })
        .and_then(|_| dev.setup_queue(1, deflate.setup))
        .and_then(|_| dev.setup_queue(2, hint.setup))
        .and_then(|_| dev.start());
    if let Err(e) = started {
        return fail(e.as_str());
    }
    fill();
    // No run yet: the device must drop this hint (the host measures the 16 MiB after it).
    if !send(&dev, &mut hint, FILL_BASE, BLOCK as u32, DESC_F_WRITE) {
        return fail("early-hint-timeout");
    }
    ResultLine::ok(NAME.as_bytes()).text("filled").end();
    let Some(run_id) = wait_cmd(&dev, |id| id > DONE) else {
        return fail("no-run");
    };
    if !send_id(&dev, &mut hint, run_id) {
        return fail("id-timeout");
    }
    for i in 0..BLOCKS {
        if !send(&dev, &mut hint, FILL_BASE + i * BLOCK, BLOCK as u32, DESC_F_WRITE) {
            return fail("hint-timeout");
        }
    }
    // The hostile driver: the MMIO gap, past RAM, unaligned, a readable 8-byte buffer.
    let ram_end = boot.e820.usable().map(|e| e.end()).max().unwrap_or(0);
    let hostile = [
        (0xd000_0000, 0x1000, DESC_F_WRITE),
        (ram_end + 0x10_0000, 0x1000, DESC_F_WRITE),
        (FILL_BASE + 0x800, 0x1000, DESC_F_WRITE),
        (DATA_START, 8, 0),
    ];
    for (addr, len, flags) in hostile {
        if !send(&dev, &mut hint, addr, len, flags) {
            return fail("hostile-timeout");
        }
    }
    if !send_id(&dev, &mut hint, STOP) {
        return fail("stop-timeout");
    }
    if wait_cmd(&dev, |id| id == DONE).is_none() {
        return fail("no-done");
    }
    // The run ended: a late hint of it must be dropped.
    if !send(&dev, &mut hint, FILL_BASE, BLOCK as u32, DESC_F_WRITE) {
        return fail("late-hint-timeout");
    }
    ResultLine::ok(NAME.as_bytes())
        .dec("hinted", BLOCK * BLOCKS)
        .dec("done", u64::from(DONE))
        .end();
    if wait_target(&dev, dev.read32(CONFIG)).is_none() {
        fail("no-target");
    }
}
