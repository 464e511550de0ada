//! virtio-net, polled: queue 0 receives into 32 posted 4 KiB buffers, queue 1 transmits from
//! 32 2 KiB buffers. Every frame carries the 12-byte virtio 1.x header (all zero on TX: no
//! offloads unless a hostile scenario asks, the probe computes its own checksums).
//!
//! A driver for any conforming device, Palisade's and Firecracker's:
//! - features: VERSION_1, and MAC and MRG_RXBUF when offered (plus what the caller wants);
//! - the MAC comes from the config space; without F_MAC the driver makes up a locally
//!   administered one, as the spec requires (a zero source MAC is not a valid frame);
//! - RX buffers: the spec asks for >= 1,526 bytes each without MRG_RXBUF or guest TSO.
//!   Firecracker also reads from its tap only while the chains it holds add up to one largest
//!   frame (65,562 bytes), so 32 x 2 KiB (65,536) starved it; 32 x 4 KiB leaves it room with
//!   up to 15 buffers awaiting the driver;
//! - with MRG_RXBUF the header's num_buffers says how many used buffers make the frame; one is
//!   the usual case (a frame <= 4,084 bytes), more are gathered into a 64 KiB scratch area.
//!
//! DMA: the RX rings in the device's queue area; the TX rings and the buffers at DATA_START
//! (rings 0..0x3000, RX buffers +0x1_0000, TX buffers +0x3_0000, scratch +0x4_0000..0x5_1000).

use super::dma::{self, QueueArea, DATA_START};
use super::queue::{Virtqueue, DESC_F_WRITE};
use super::{InitError, MmioDevice};

pub const F_MAC: u64 = 1 << 5;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const HDR: usize = 12;
pub const QUEUE_SIZE: u16 = 32;
/// The MAC used when the device has none (locally administered, unicast).
pub const MADE_UP_MAC: [u8; 6] = [0x06, 0x00, 0x00, 0x00, 0x00, 0x01];
const BUF: u64 = 2048;
const RX_BUF: u64 = 4096;
const RX_BUFS: u64 = DATA_START + 0x1_0000;
const TX_BUFS: u64 = DATA_START + 0x3_0000;
/// Where a frame spread over several buffers is gathered (header included).
const SCRATCH: u64 = DATA_START + 0x4_0000;
/// The largest frame and header a device may deliver (64 KiB + Ethernet + header).
const SCRATCH_LEN: usize = 65_562;

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
    /// MRG_RXBUF negotiated: num_buffers in the header counts.
    mergeable: bool,
    /// Frames that did not fit SCRATCH_LEN or whose buffers never came (cut short).
    pub rx_cut: u32,
}

impl Net {
    pub fn open(dev: MmioDevice) -> Result<Self, InitError> {
        Self::open_with(dev, 0)
    }

    /// As `open`, also accepting the offload features in `wanted` (if offered).
    pub fn open_with(dev: MmioDevice, wanted: u64) -> Result<Self, InitError> {
        let rx_area: QueueArea = dma::queue_area(dev.index);
        let tx_area = QueueArea { desc: DATA_START, avail: DATA_START + 0x1000, used: DATA_START + 0x2000, request: 0 };
        dev.reset(); // before its rings are rewritten (see Virtqueue::new)
        let mut rx = Virtqueue::new(&rx_area, QUEUE_SIZE);
        let tx = Virtqueue::new(&tx_area, QUEUE_SIZE);
        let features = dev.negotiate(F_MAC | F_MRG_RXBUF | wanted, rx.setup)?;
        dev.setup_queue(1, tx.setup)?;
        let mut mac = MADE_UP_MAC;
        if features & F_MAC != 0 {
            let config = dev.config_u64(0);
            for (i, byte) in mac.iter_mut().enumerate() {
                *byte = (config >> (8 * i)) as u8;
            }
        }
        for i in 0..QUEUE_SIZE {
            rx.set_desc(i, RX_BUFS + u64::from(i) * RX_BUF, RX_BUF as u32, DESC_F_WRITE, 0);
            rx.push(i);
        }
        dev.start()?;
        dev.notify(0);
        let mergeable = features & F_MRG_RXBUF != 0;
        Ok(Self {
            dev,
            mac,
            rx,
            tx,
            tx_next: 0,
            tx_in_flight: 0,
            tx_unnotified: 0,
            rx_held: None,
            rx_unnotified: 0,
            mergeable,
            rx_cut: 0,
        })
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
            self.repost(index);
        }
        let Some((id, len)) = self.rx.try_used() else {
            if self.rx_unnotified > 0 {
                self.dev.notify(0);
                self.rx_unnotified = 0;
            }
            return None;
        };
        let index = (id % u32::from(QUEUE_SIZE)) as u16;
        let len = (len as usize).min(RX_BUF as usize);
        let addr = RX_BUFS + u64::from(index) * RX_BUF;
        let buffers = if self.mergeable && len >= HDR {
            let h = dma::slice(addr + 10, 2);
            u16::from_le_bytes([h[0], h[1]])
        } else {
            1
        };
        if buffers <= 1 {
            self.rx_held = Some(index);
            if len <= HDR {
                return Some(&[]);
            }
            return Some(dma::slice(addr + HDR as u64, len - HDR));
        }
        Some(self.gather(index, len, buffers))
    }

    /// Gives RX buffer `index` back to the device (notifying every 8).
    fn repost(&mut self, index: u16) {
        self.rx.push(index);
        self.rx_unnotified += 1;
        if self.rx_unnotified >= 8 {
            self.dev.notify(0);
            self.rx_unnotified = 0;
        }
    }

    /// Copies a frame of `buffers` used buffers, the first `index` holding `len` bytes, into
    /// SCRATCH and re-posts them all; a frame longer than SCRATCH_LEN is cut there (and
    /// counted), as is one whose further buffers do not come within the timeout.
    fn gather(&mut self, index: u16, len: usize, buffers: u16) -> &'static [u8] {
        let mut total = 0usize;
        let mut next = Some((index, len));
        let mut taken = 0u16;
        let mut cut = false;
        while let Some((index, len)) = next {
            let room = SCRATCH_LEN - total;
            let copy = len.min(room);
            cut |= copy < len;
            dma::write_bytes(SCRATCH + total as u64, dma::slice(RX_BUFS + u64::from(index) * RX_BUF, copy));
            total += copy;
            self.repost(index);
            taken += 1;
            next = None;
            if taken < buffers {
                match self.rx.wait_used(|| false) {
                    Some((id, len)) => {
                        next = Some(((id % u32::from(QUEUE_SIZE)) as u16, (len as usize).min(RX_BUF as usize)))
                    }
                    None => cut = true,
                }
            }
        }
        if cut {
            self.rx_cut = self.rx_cut.wrapping_add(1);
        }
        dma::slice(SCRATCH + HDR as u64, total.saturating_sub(HDR))
    }
}
