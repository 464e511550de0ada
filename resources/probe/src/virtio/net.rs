//! virtio-net, polled: queue 0 receives into 32 posted 2 KiB buffers, queue 1 transmits from
//! 32 2 KiB buffers. Every frame carries the 12-byte virtio 1.x header (all zero: no offloads
//! are negotiated, the probe computes its own checksums). The MAC comes from the config space.
//!
//! DMA: the RX rings in the device's queue area; the TX rings and both buffer sets at
//! DATA_START (rings 0..0x3000, RX buffers +0x10000, TX buffers +0x20000).

use super::dma::{self, QueueArea, DATA_START};
use super::queue::{Virtqueue, DESC_F_WRITE};
use super::{InitError, MmioDevice};

pub const F_MAC: u64 = 1 << 5;
pub const HDR: usize = 12;
pub const QUEUE_SIZE: u16 = 32;
const BUF: u64 = 2048;
const RX_BUFS: u64 = DATA_START + 0x1_0000;
const TX_BUFS: u64 = DATA_START + 0x2_0000;

pub struct Net {
    pub dev: MmioDevice,
    pub mac: [u8; 6],
    rx: Virtqueue,
    tx: Virtqueue,
    tx_next: u16,
    tx_in_flight: u16,
    /// Frames queued since the last notify.
    tx_unnotified: u16,
    /// The RX buffer handed out by `recv`, re-posted on the next call.
    rx_held: Option<u16>,
    /// RX buffers re-posted since the last notify.
    rx_unnotified: u16,
}

impl Net {
    pub fn open(dev: MmioDevice) -> Result<Self, InitError> {
        Self::open_with(dev, 0)
    }

    /// As `open`, also accepting the offload features in `wanted` (if offered).
    pub fn open_with(dev: MmioDevice, wanted: u64) -> Result<Self, InitError> {
        let rx_area: QueueArea = dma::queue_area(dev.index);
        let tx_area = QueueArea { desc: DATA_START, avail: DATA_START + 0x1000, used: DATA_START + 0x2000, request: 0 };
        let mut rx = Virtqueue::new(&rx_area, QUEUE_SIZE);
        let tx = Virtqueue::new(&tx_area, QUEUE_SIZE);
        let features = dev.negotiate(F_MAC | wanted, rx.setup)?;
        dev.setup_queue(1, tx.setup)?;
        let mut mac = [0u8; 6];
        if features & F_MAC != 0 {
            let config = dev.config_u64(0);
            for (i, byte) in mac.iter_mut().enumerate() {
                *byte = (config >> (8 * i)) as u8;
            }
        }
        for i in 0..QUEUE_SIZE {
            rx.set_desc(i, RX_BUFS + u64::from(i) * BUF, BUF as u32, DESC_F_WRITE, 0);
            rx.push(i);
        }
        dev.start()?;
        dev.notify(0);
        Ok(Self { dev, mac, rx, tx, tx_next: 0, tx_in_flight: 0, tx_unnotified: 0, rx_held: None, rx_unnotified: 0 })
    }

    /// A TX buffer to build the next frame in (after the header); `send` queues it.
    pub fn tx_buffer(&mut self) -> &'static mut [u8] {
        while self.tx_in_flight >= QUEUE_SIZE {
            self.flush();
            if self.tx.wait_used(|| false).is_none() {
                break;
            }
            self.tx_in_flight -= 1;
        }
        while self.tx.try_used().is_some() {
            self.tx_in_flight -= 1;
        }
        let addr = TX_BUFS + u64::from(self.tx_next % QUEUE_SIZE) * BUF;
        dma::zero(addr, HDR as u64);
        // SAFETY: the buffer lies in the DMA window; the device is done with it (it is not in
        // flight), and it is handed out once until `send`.
        unsafe { core::slice::from_raw_parts_mut((addr + HDR as u64) as *mut u8, (BUF as usize) - HDR) }
    }

    /// Queues the frame of `len` bytes built in the last `tx_buffer`; notifies every 16.
    pub fn send(&mut self, len: usize) {
        let index = self.tx_next % QUEUE_SIZE;
        let addr = TX_BUFS + u64::from(index) * BUF;
        self.tx.set_desc(index, addr, (HDR + len) as u32, 0, 0);
        self.tx.push(index);
        self.tx_next = self.tx_next.wrapping_add(1);
        self.tx_in_flight += 1;
        self.tx_unnotified += 1;
        if self.tx_unnotified >= 16 {
            self.flush();
        }
    }

    /// Sends one descriptor of `len` bytes at `addr`, header included (hostile sizes and
    /// headers built by the caller), and waits until the device took it: `addr` may then be
    /// reused.
    pub fn send_at(&mut self, addr: u64, len: u32) {
        let _ = self.tx_buffer();
        let index = self.tx_next % QUEUE_SIZE;
        self.tx.set_desc(index, addr, len, 0, 0);
        self.tx.push(index);
        self.tx_next = self.tx_next.wrapping_add(1);
        self.tx_in_flight += 1;
        self.tx_unnotified += 1;
        self.drain_tx();
    }

    /// Tells the device about queued frames.
    pub fn flush(&mut self) {
        if self.tx_unnotified > 0 {
            self.dev.notify(1);
            self.tx_unnotified = 0;
        }
    }

    /// Waits until every queued frame has been taken by the device.
    pub fn drain_tx(&mut self) {
        self.flush();
        while self.tx_in_flight > 0 {
            if self.tx.wait_used(|| false).is_none() {
                return;
            }
            self.tx_in_flight -= 1;
        }
    }

    /// The next received frame (without its header), if one is there; valid until the next
    /// call.
    pub fn recv(&mut self) -> Option<&'static [u8]> {
        if let Some(index) = self.rx_held.take() {
            self.rx.push(index);
            self.rx_unnotified += 1;
            if self.rx_unnotified >= 8 {
                self.dev.notify(0);
                self.rx_unnotified = 0;
            }
        }
        let Some((id, len)) = self.rx.try_used() else {
            if self.rx_unnotified > 0 {
                self.dev.notify(0);
                self.rx_unnotified = 0;
            }
            return None;
        };
        let index = (id % u32::from(QUEUE_SIZE)) as u16;
        self.rx_held = Some(index);
        let len = (len as usize).min(BUF as usize);
        if len <= HDR {
            return Some(&[]);
        }
        Some(dma::slice(RX_BUFS + u64::from(index) * BUF + HDR as u64, len - HDR))
    }
}
