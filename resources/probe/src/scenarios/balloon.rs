//! `balloon`: drives virtio-balloon as a guest driver would, then as a hostile one.
//! Fills 32 MiB from guest-physical 32 MiB (`probe: balloon-filled ok pages=8192`), waits for
//! the host to set a target (`num_pages`, by `PATCH /balloon`), gives that many pages of the
//! filled range to the balloon in arrays of 256 page numbers, writes `actual`, then sends what
//! a hostile driver would: page numbers past RAM, in the MMIO gap, a duplicate, one past the
//! target, an array of 7 bytes, a device-writable array, and on the deflate queue one page in
//! the balloon and one never in it. Prints `probe: balloon ok inflated=N` and waits for the
//! host to change the target again (it measures the VMM's RSS meanwhile) before powering off.

use crate::serial::ResultLine;
use crate::virtio::dma::{self, QueueArea, DATA_START};
use crate::virtio::queue::{Virtqueue, DESC_F_WRITE};
use crate::virtio::{self, tsc, TIMEOUT_TSC};
use crate::zero_page::BootInfo;

pub const NAME: &str = "balloon";
pub const DEVICE_ID_BALLOON: u32 = 5;
pub const FILL_BASE: u64 = 32 << 20;
pub const FILL_PAGES: u32 = 8192;
pub const PAGE: u64 = 4096;
const PER_ARRAY: u32 = 256;
/// The config space register of `num_pages` and `actual` (REG_CONFIG + 0 and + 4).
pub const CONFIG: u64 = 0x100;
/// VIRTIO_BALLOON_F_STATS_VQ.
pub const F_STATS_VQ: u64 = 1 << 1;

fn fail(what: &str) {
    ResultLine::fail(NAME.as_bytes()).text(what).end();
}

pub fn fill() {
    let mut addr = FILL_BASE;
    while addr < FILL_BASE + u64::from(FILL_PAGES) * PAGE {
        // SAFETY: [32 MiB, 64 MiB) is RAM below 1 GiB (identity-mapped by boot.rs) above the
        // probe image, its stacks, page tables and DMA window; nothing else uses it.
        unsafe { core::ptr::write_volatile(addr as *mut u64, addr | 1) };
        addr += 8;
    }
}

/// Sends one buffer of `len` bytes at DATA_START on `queue` and waits for it.
fn send(dev: &virtio::MmioDevice, queue: &mut Virtqueue, index: u32, len: u32, flags: u16) -> bool {
    queue.set_desc(0, DATA_START, len, flags, 0);
    queue.push(0);
    dev.notify(index);
    queue.wait_used(|| false).is_some()
}

/// Writes `pfns` at DATA_START and sends them on `queue`.
pub fn send_pfns(dev: &virtio::MmioDevice, queue: &mut Virtqueue, index: u32, pfns: &[u32]) -> bool {
    for (i, pfn) in pfns.iter().enumerate() {
        dma::write_u32(DATA_START + 4 * i as u64, *pfn);
    }
    send(dev, queue, index, 4 * pfns.len() as u32, 0)
}

/// Waits until `num_pages` differs from `old`; None after about 30 s.
pub fn wait_target(dev: &virtio::MmioDevice, old: u32) -> Option<u32> {
    let start = tsc();
    loop {
        let now = dev.read32(CONFIG);
        if now != old {
            return Some(now);
        }
        if tsc().wrapping_sub(start) > 3 * TIMEOUT_TSC {
            return None;
        }
        core::hint::spin_loop();
    }
}

/// The first balloon device, started, with its inflate and deflate queues (16 entries each)
/// and, with `stats`, its statistics queue (VIRTIO_BALLOON_F_STATS_VQ accepted).
pub fn open_with(boot: &BootInfo, stats: bool) -> Result<(virtio::MmioDevice, Virtqueue, Virtqueue, Option<Virtqueue>), &'static str> {
    if !dma::available(boot) {
        return Err("no-ram-for-dma");
    }
    let Some(dev) = virtio::find(boot, DEVICE_ID_BALLOON) else {
        return Err("no-virtio-balloon-device");
    };
    dev.reset();
    let inflate = Virtqueue::new(&dma::queue_area(dev.index), 16);
    let area = |base: u64| QueueArea { desc: base, avail: base + 0x1000, used: base + 0x2000, request: base + 0x3000 };
    let deflate = Virtqueue::new(&area(DATA_START + 0x30_0000), 16);
    let stats_queue = stats.then(|| Virtqueue::new(&area(DATA_START + 0x34_0000), 16));
    let wanted = if stats { F_STATS_VQ } else { 0 };
    let features = dev.negotiate(wanted, inflate.setup).map_err(|e| e.as_str())?;
    if features & wanted != wanted {
        return Err("no-stats-feature");
    }
    dev.setup_queue(1, deflate.setup).map_err(|e| e.as_str())?;
    if let Some(q) = &stats_queue {
        dev.setup_queue(2, q.setup).map_err(|e| e.as_str())?;
    }
    dev.start().map_err(|e| e.as_str())?;
    Ok((dev, inflate, deflate, stats_queue))
}

/// As `open_with`, without the statistics queue.
pub fn open(boot: &BootInfo) -> Result<(virtio::MmioDevice, Virtqueue, Virtqueue), &'static str> {
    open_with(boot, false).map(|(dev, inflate, deflate, _)| (dev, inflate, deflate))
}

pub fn run(boot: &BootInfo) {
    if !boot.e820.is_usable(FILL_BASE, FILL_BASE + u64::from(FILL_PAGES) * PAGE) {
        return fail("no-ram");
    }
    let (dev, mut inflate, mut deflate) = match open(boot) {
        Ok(opened) => opened,
        Err(e) => return fail(e),
    };
    fill();
    ResultLine::ok(b"balloon-filled").dec("pages", u64::from(FILL_PAGES)).end();
    let Some(target) = wait_target(&dev, dev.read32(CONFIG)) else {
        return fail("no-target");
    };
    let pages = target.min(FILL_PAGES);
    let first = (FILL_BASE / PAGE) as u32;
    let mut given = 0;
    let mut array = [0u32; PER_ARRAY as usize];
    while given < pages {
        let n = PER_ARRAY.min(pages - given);
        for (i, slot) in array.iter_mut().take(n as usize).enumerate() {
            *slot = first + given + i as u32;
        }
        if !send_pfns(&dev, &mut inflate, 0, &array[..n as usize]) {
            return fail("inflate-timeout");
        }
        given += n;
    }
    dev.write32(CONFIG + 4, given);
    // The hostile driver: 4 bad page numbers, one past the target (the balloon is full).
    let ram_end = boot.e820.usable().map(|e| e.end()).max().unwrap_or(0);
    let past_ram = (ram_end / PAGE) as u32 + 16;
    let after_fill = first + FILL_PAGES;
    let in_gap = (0xd000_0000u64 / PAGE) as u32;
    let ok = send_pfns(&dev, &mut inflate, 0, &[past_ram, in_gap, first, u32::MAX])
        && send_pfns(&dev, &mut inflate, 0, &[after_fill])
        && send(&dev, &mut inflate, 0, 7, 0)
        && send(&dev, &mut inflate, 0, 8, DESC_F_WRITE)
        && send_pfns(&dev, &mut deflate, 1, &[first, first - 1]);
    if !ok {
        return fail("hostile-timeout");
    }
    ResultLine::ok(NAME.as_bytes()).dec("inflated", u64::from(given)).end();
    if wait_target(&dev, target).is_none() {
        fail("no-second-target");
    }
}
