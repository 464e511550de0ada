//! A polling virtio 1.x driver for the MMIO transport (register layout version 2), run at
//! CPL3: the device windows named by `virtio_mmio.device=SIZE@ADDR:IRQ` on the command line
//! are mapped uncached and user-accessible by boot.rs. No interrupts: the probe polls the used
//! ring. Queue memory comes from `dma`, a fixed area of the probe's identity-mapped RAM.

pub mod blk;
pub mod dma;
pub mod net;
pub mod queue;
pub mod vsock;

use crate::zero_page::BootInfo;

pub const MAGIC_VALUE: u32 = 0x7472_6976;
pub const DEVICE_ID_NET: u32 = 1;
pub const DEVICE_ID_BLOCK: u32 = 2;
pub const DEVICE_ID_RNG: u32 = 4;
pub const F_VERSION_1: u64 = 1 << 32;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC: u64 = 0x080;
const REG_QUEUE_AVAIL: u64 = 0x090;
const REG_QUEUE_USED: u64 = 0x0a0;
const REG_CONFIG: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;

/// Most devices the probe looks at.
pub const MAX_DEVICES: usize = 24;

/// One device window.
#[derive(Clone, Copy)]
pub struct MmioDevice {
    pub base: u64,
    pub irq: u32,
    /// Position on the command line: selects the device's DMA area.
    pub index: usize,
}

fn parse_hex(text: &[u8]) -> Option<u64> {
    let digits = text.strip_prefix(b"0x").or_else(|| text.strip_prefix(b"0X"))?;
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &c| {
        let d = (c as char).to_digit(16)?;
        Some(acc << 4 | u64::from(d))
    })
}

fn parse_dec(text: &[u8]) -> Option<u32> {
    if text.is_empty() || text.len() > 9 {
        return None;
    }
    text.iter().try_fold(0u32, |acc, &c| Some(acc * 10 + (c as char).to_digit(10)?))
}

/// `4K@0xc0001000:5[:id]` -> (base, irq).
fn parse_device(value: &[u8]) -> Option<(u64, u32)> {
    let at = value.iter().position(|&c| c == b'@')?;
    let rest = &value[at + 1..];
    let colon = rest.iter().position(|&c| c == b':')?;
    let base = parse_hex(&rest[..colon])?;
    let irq_text = &rest[colon + 1..];
    let irq_end = irq_text.iter().position(|&c| c == b':').unwrap_or(irq_text.len());
    Some((base, parse_dec(&irq_text[..irq_end])?))
}

/// The devices on the command line, in order.
pub fn devices(boot: &BootInfo) -> impl Iterator<Item = MmioDevice> + '_ {
    boot.cmdline()
        .split(|&b| b == b' ' || b == b'\t' || b == b'\n')
        .filter_map(|word| word.strip_prefix(b"virtio_mmio.device="))
        .filter_map(parse_device)
        .take(MAX_DEVICES)
        .enumerate()
        .map(|(index, (base, irq))| MmioDevice { base, irq, index })
}

/// The first device of type `id` that answers as virtio-mmio version 2.
pub fn find(boot: &BootInfo, id: u32) -> Option<MmioDevice> {
    devices(boot).find(|d| d.is_modern() && d.device_id() == id)
}

pub enum InitError {
    NotVirtio,
    FeaturesRefused,
    NoQueue,
    NotActivated,
}

impl InitError {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NotVirtio => "not-virtio-mmio-v2",
            Self::FeaturesRefused => "features-refused",
            Self::NoQueue => "no-queue-0",
            Self::NotActivated => "not-activated",
        }
    }
}

/// Where the driver puts a queue's three rings.
#[derive(Clone, Copy)]
pub struct QueueSetup {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl MmioDevice {
    pub fn read32(&self, offset: u64) -> u32 {
        // SAFETY: the window is MMIO mapped uncached and user-accessible by boot.rs
        // (0xc000_0000..0xc020_0000); `offset` stays inside the device's 4 KiB.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    pub fn write32(&self, offset: u64, value: u32) {
        // SAFETY: as read32.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }

    fn write64(&self, offset: u64, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }

    pub fn is_modern(&self) -> bool {
        self.read32(REG_MAGIC) == MAGIC_VALUE && self.read32(REG_VERSION) == 2
    }

    pub fn device_id(&self) -> u32 {
        self.read32(REG_DEVICE_ID)
    }

    pub fn status(&self) -> u32 {
        self.read32(REG_STATUS)
    }

    pub fn set_status(&self, status: u32) {
        self.write32(REG_STATUS, status);
    }

    pub fn reset(&self) {
        self.set_status(0);
    }

    pub fn device_features(&self) -> u64 {
        self.write32(REG_DEVICE_FEATURES_SEL, 0);
        let low = self.read32(REG_DEVICE_FEATURES);
        self.write32(REG_DEVICE_FEATURES_SEL, 1);
        u64::from(self.read32(REG_DEVICE_FEATURES)) << 32 | u64::from(low)
    }

    pub fn config_u64(&self, offset: u64) -> u64 {
        u64::from(self.read32(REG_CONFIG + offset)) | u64::from(self.read32(REG_CONFIG + offset + 4)) << 32
    }

    /// Tells the device that queue `index` has new buffers.
    pub fn notify(&self, index: u32) {
        self.write32(REG_QUEUE_NOTIFY, index);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, features (`wanted` & offered, VERSION_1 included),
    /// FEATURES_OK, queue 0 at `queue`. Returns the negotiated features; DRIVER_OK is left to
    /// `start` so that hostile cases can set up broken queues first.
    pub fn negotiate(&self, wanted: u64, queue: QueueSetup) -> Result<u64, InitError> {
        if !self.is_modern() {
            return Err(InitError::NotVirtio);
        }
        self.reset();
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let features = self.device_features() & (wanted | F_VERSION_1);
        self.write32(REG_DRIVER_FEATURES_SEL, 0);
        self.write32(REG_DRIVER_FEATURES, features as u32);
        self.write32(REG_DRIVER_FEATURES_SEL, 1);
        self.write32(REG_DRIVER_FEATURES, (features >> 32) as u32);
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.set_status(status);
        if self.status() & STATUS_FEATURES_OK == 0 {
            return Err(InitError::FeaturesRefused);
        }
        self.setup_queue(0, queue)?;
        Ok(features)
    }

    /// Configures queue `index` at `queue` and sets it ready (after FEATURES_OK).
    pub fn setup_queue(&self, index: u32, queue: QueueSetup) -> Result<(), InitError> {
        self.write32(REG_QUEUE_SEL, index);
        let max = self.read32(REG_QUEUE_NUM_MAX);
        if max == 0 || u32::from(queue.size) > max {
            return Err(InitError::NoQueue);
        }
        self.write32(REG_QUEUE_NUM, u32::from(queue.size));
        self.write64(REG_QUEUE_DESC, queue.desc);
        self.write64(REG_QUEUE_AVAIL, queue.avail);
        self.write64(REG_QUEUE_USED, queue.used);
        self.write32(REG_QUEUE_READY, 1);
        Ok(())
    }

    /// DRIVER_OK; the device now serves its queue (unless it reports NEEDS_RESET).
    pub fn start(&self) -> Result<(), InitError> {
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        self.set_status(status);
        if self.status() != status {
            return Err(InitError::NotActivated);
        }
        Ok(())
    }
}

/// The time-stamp counter, for timeouts.
pub fn tsc() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: RDTSC reads a counter into EDX:EAX; CR4.TSD is clear, so it is allowed at CPL3.
    unsafe { core::arch::asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags)) };
    u64::from(high) << 32 | u64::from(low)
}

/// Roughly ten seconds on any host this runs on (1-4 GHz TSC).
pub const TIMEOUT_TSC: u64 = 30_000_000_000;
