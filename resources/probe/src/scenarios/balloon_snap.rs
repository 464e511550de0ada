//! `balloon-snap`: the balloon across a snapshot. Fills 32 MiB from guest-physical 32 MiB
//! (`probe: balloon-snap ok filled`, the device active), waits for a first target (`num_pages`, T1), gives the first T1 pages of the fill, writes
//! `actual` and prints `probe: balloon-snap saved-at inflated=T1`; then waits for a larger
//! target T2 (the host snapshots meanwhile, and a new VMM restores the snapshot). On T2 it
//! writes the next T2 - T1 pages again (the VMM holding guest RAM now holds them) and gives
//! them, sends one page of the first batch again (a duplicate: refused only when the balloon's
//! pages came back with the snapshot) and deflates the first page of the first batch (taken
//! back only when it is in the restored balloon), writes `actual` and prints
//! `probe: balloon-snap ok inflated=N deflated=1`. Waits for one more target change before
//! powering off.

use crate::serial::ResultLine;
use crate::zero_page::BootInfo;

use super::balloon::{fill, open, send_pfns, wait_target, CONFIG, FILL_BASE, FILL_PAGES, PAGE};

pub const NAME: &str = "balloon-snap";
const PER_ARRAY: u32 = 256;

fn fail(what: &str) {
    ResultLine::fail(NAME.as_bytes()).text(what).end();
}

/// Writes every page of `[first, first + count)` (page numbers) again.
fn touch(first: u32, count: u32) {
    for pfn in first..first + count {
        let addr = u64::from(pfn) * PAGE;
        // SAFETY: the pages lie in [32 MiB, 64 MiB), RAM below 1 GiB (identity-mapped by
        // boot.rs) that only this scenario uses (checked usable by `run`).
        unsafe { core::ptr::write_volatile(addr as *mut u64, addr | 3) };
    }
}

/// Gives pages `[first, first + count)` to the balloon in arrays of 256.
fn give(dev: &crate::virtio::MmioDevice, queue: &mut crate::virtio::queue::Virtqueue, first: u32, count: u32) -> bool {
    let mut array = [0u32; PER_ARRAY as usize];
    let mut given = 0;
    while given < count {
        let n = PER_ARRAY.min(count - given);
        for (i, slot) in array.iter_mut().take(n as usize).enumerate() {
            *slot = first + given + i as u32;
        }
        if !send_pfns(dev, queue, 0, &array[..n as usize]) {
            return false;
        }
        given += n;
    }
    true
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
    ResultLine::ok(NAME.as_bytes()).text("filled").end();
    let Some(t1) = wait_target(&dev, dev.read32(CONFIG)) else {
        return fail("no-target");
    };
    let t1 = t1.min(FILL_PAGES / 2);
    let first = (FILL_BASE / PAGE) as u32;
    if !give(&dev, &mut inflate, first, t1) {
        return fail("inflate-timeout");
    }
    dev.write32(CONFIG + 4, t1);
    ResultLine::ok(NAME.as_bytes()).text("saved-at").dec("inflated", u64::from(t1)).end();
    let Some(t2) = wait_target(&dev, dev.read32(CONFIG)) else {
        return fail("no-second-target");
    };
    let more = t2.min(FILL_PAGES).saturating_sub(t1);
    touch(first + t1, more);
    let ok = give(&dev, &mut inflate, first + t1, more)
        && send_pfns(&dev, &mut inflate, 0, &[first + 1])
        && send_pfns(&dev, &mut deflate, 1, &[first]);
    if !ok {
        return fail("timeout-after-restore");
    }
    dev.write32(CONFIG + 4, t1 + more - 1);
    ResultLine::ok(NAME.as_bytes())
        .dec("inflated", u64::from(more))
        .dec("deflated", 1)
        .end();
    if wait_target(&dev, t2).is_none() {
        fail("no-third-target");
    }
}
