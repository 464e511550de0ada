//! virtio-vsock (device id 19), polled, packets only: queue 0 receives into 32 posted chains
//! (a 44-byte header descriptor, then a 4 KiB data descriptor), queue 1 transmits from 32
//! slots (header descriptor, then up to 16 KiB of data when the packet has any), queue 2
//! holds 8 event buffers. The guest CID comes from the config space (le64 at offset 0).
//! Connections and credit live in `crate::vsock_stream`.
//!
//! DMA: the RX rings in the device's queue area; the rest at DATA_START: TX rings 0..0x3000,
//! event rings 0x3000..0x6000, event buffers 0x6000, RX headers 0x7000, TX headers 0x8000, RX
//! data 0x1_0000 (32 x 4 KiB), TX data 0x4_0000 (32 x 16 KiB). From SCRATCH (DATA_START + 1
//! MiB) on, 2 MiB are the scenarios' own.

use super::dma::{self, QueueArea, DATA_START};
use super::queue::{Virtqueue, DESC_F_NEXT, DESC_F_WRITE};
use super::{InitError, MmioDevice};

pub const DEVICE_ID_VSOCK: u32 = 19;
pub const HDR: usize = 44;
pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
pub const SHUTDOWN_SEND: u32 = 2;
pub const HOST_CID: u64 = 2;

const RX_SLOTS: u16 = 32;
/// The RX queue has twice the descriptors the slots need: the second half is for hand-made
/// buffers (`post_rx_raw`).
const RX_QUEUE_SIZE: u16 = RX_SLOTS * 4;
/// The descriptor of the hand-made RX buffer.
const RX_RAW_DESC: u16 = RX_SLOTS * 2;
const TX_SLOTS: u16 = 32;
const EVENT_SLOTS: u16 = 8;
pub const RX_BUF: u32 = 4096;
pub const TX_BUF: u32 = 16 * 1024;
const TX_RINGS: u64 = DATA_START;
const EVENT_RINGS: u64 = DATA_START + 0x3000;
const EVENT_BUFS: u64 = DATA_START + 0x6000;
const RX_HDRS: u64 = DATA_START + 0x7000;
const TX_HDRS: u64 = DATA_START + 0x8000;
const RX_DATA: u64 = DATA_START + 0x1_0000;
const TX_DATA: u64 = DATA_START + 0x4_0000;
/// Free DMA memory for the scenarios (echo buffers, hand-made packets), 2 MiB.
pub const SCRATCH: u64 = DATA_START + 0x10_0000;

/// `struct virtio_vsock_hdr`, decoded.
#[derive(Clone, Copy, Default)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Hdr {
    /// The 44 bytes on the wire, little endian.
    pub fn encode(&self) -> [u8; HDR] {
        let mut b = [0u8; HDR];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Decodes a header; None when `b` is shorter than one.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < HDR {
            return None;
        }
        Some(Self {
            src_cid: u64::from(le32(b, 0)) | u64::from(le32(b, 4)) << 32,
            dst_cid: u64::from(le32(b, 8)) | u64::from(le32(b, 12)) << 32,
            src_port: le32(b, 16),
            dst_port: le32(b, 20),
            len: le32(b, 24),
            kind: le16(b, 28),
            op: le16(b, 30),
            flags: le32(b, 32),
            buf_alloc: le32(b, 36),
            fwd_cnt: le32(b, 40),
        })
    }
}

/// A received packet; `data` is valid until the next `recv`.
pub struct Packet {
    pub hdr: Hdr,
    pub data: &'static [u8],
}

pub struct Vsock {
    pub dev: MmioDevice,
    pub cid: u64,
    rx: Virtqueue,
    tx: Virtqueue,
    event: Virtqueue,
    /// Bit i: TX slot i is with the device.
    tx_busy: u32,
    tx_unnotified: u16,
    rx_held: Option<u16>,
    rx_unnotified: u16,
    /// Events seen on queue 2 (transport resets).
    pub events: u64,
    /// The id (le32) of the last event seen (0: VIRTIO_VSOCK_EVENT_TRANSPORT_RESET).
    pub last_event: u32,
    /// Used RX entries with an id or a length that makes no sense.
    pub bad_used: u64,
    /// The used length of the hand-made RX buffer, once the device returned it.
    pub raw_rx_used: Option<u32>,
}

impl Vsock {
    pub fn open(dev: MmioDevice) -> Result<Self, InitError> {
        let rx_area: QueueArea = dma::queue_area(dev.index);
        let tx_area = QueueArea { desc: TX_RINGS, avail: TX_RINGS + 0x1000, used: TX_RINGS + 0x2000, request: 0 };
        let ev_area =
            QueueArea { desc: EVENT_RINGS, avail: EVENT_RINGS + 0x1000, used: EVENT_RINGS + 0x2000, request: 0 };
        dev.reset(); // before its rings are rewritten (see Virtqueue::new)
        let mut rx = Virtqueue::new(&rx_area, RX_QUEUE_SIZE);
        let tx = Virtqueue::new(&tx_area, TX_SLOTS * 2);
        let mut event = Virtqueue::new(&ev_area, EVENT_SLOTS);
        dev.negotiate(0, rx.setup)?;
        dev.setup_queue(1, tx.setup)?;
        dev.setup_queue(2, event.setup)?;
        let cid = dev.config_u64(0);
        for i in 0..RX_SLOTS {
            rx.set_desc(2 * i, RX_HDRS + u64::from(i) * 64, HDR as u32, DESC_F_WRITE | DESC_F_NEXT, 2 * i + 1);
            rx.set_desc(2 * i + 1, RX_DATA + u64::from(i) * u64::from(RX_BUF), RX_BUF, DESC_F_WRITE, 0);
            rx.push(2 * i);
        }
        for i in 0..EVENT_SLOTS {
            event.set_desc(i, EVENT_BUFS + u64::from(i) * 8, 8, DESC_F_WRITE, 0);
            event.push(i);
        }
        dev.start()?;
        dev.notify(0);
        dev.notify(2);
        Ok(Self {
            dev,
            cid,
            rx,
            tx,
            event,
            tx_busy: 0,
            tx_unnotified: 0,
            rx_held: None,
            rx_unnotified: 0,
            events: 0,
            last_event: u32::MAX,
            bad_used: 0,
            raw_rx_used: None,
        })
    }

    /// Takes back the TX slots the device is done with.
    fn reap_tx(&mut self) {
        while let Some((id, _)) = self.tx.try_used() {
            let slot = (id / 2) % u32::from(TX_SLOTS);
            self.tx_busy &= !(1 << slot);
        }
    }

    /// A free TX slot, waiting (up to the queue timeout) for one.
    fn free_slot(&mut self) -> Option<u16> {
        self.reap_tx();
        if self.tx_busy == u32::MAX {
            self.flush();
            let (id, _) = self.tx.wait_used(|| false)?;
            self.tx_busy &= !(1 << ((id / 2) % u32::from(TX_SLOTS)));
            self.reap_tx();
        }
        Some((!self.tx_busy).trailing_zeros() as u16)
    }

    /// Whether a TX slot is free right now (no waiting).
    pub fn can_send(&mut self) -> bool {
        self.reap_tx();
        self.tx_busy != u32::MAX
    }

    /// Queues one packet: `hdr` and up to TX_BUF bytes of `data` (hdr.len is sent as given).
    /// Notifies every 8 packets; `flush` notifies the rest. False when no slot came free.
    pub fn send(&mut self, hdr: &Hdr, data: &[u8]) -> bool {
        let Some(slot) = self.free_slot() else { return false };
        let hdr_addr = TX_HDRS + u64::from(slot) * 64;
        dma::write_bytes(hdr_addr, &hdr.encode());
        let len = data.len().min(TX_BUF as usize);
        let data_addr = TX_DATA + u64::from(slot) * u64::from(TX_BUF);
        dma::write_bytes(data_addr, &data[..len]);
        self.queue(slot, (hdr_addr, HDR as u32), (len > 0).then_some((data_addr, len as u32)));
        true
    }

    /// Queues a hand-made chain: a first descriptor and an optional second one, anywhere
    /// (hostile lengths included), then waits until the device has taken it.
    pub fn send_raw(&mut self, first: (u64, u32), second: Option<(u64, u32)>) -> bool {
        let Some(slot) = self.free_slot() else { return false };
        self.queue(slot, first, second);
        self.drain_tx()
    }

    fn queue(&mut self, slot: u16, first: (u64, u32), second: Option<(u64, u32)>) {
        let head = 2 * slot;
        match second {
            Some((addr, len)) => {
                self.tx.set_desc(head, first.0, first.1, DESC_F_NEXT, head + 1);
                self.tx.set_desc(head + 1, addr, len, 0, 0);
            }
            None => self.tx.set_desc(head, first.0, first.1, 0, 0),
        }
        self.tx_busy |= 1 << slot;
        self.tx.push(head);
        self.tx_unnotified += 1;
        if self.tx_unnotified >= 8 {
            self.flush();
        }
    }

    /// Tells the device about queued packets.
    pub fn flush(&mut self) {
        if self.tx_unnotified > 0 {
            self.dev.notify(1);
            self.tx_unnotified = 0;
        }
    }

    /// Waits until the device has taken every queued packet; false on timeout.
    pub fn drain_tx(&mut self) -> bool {
        self.flush();
        while self.tx_busy != 0 {
            let Some((id, _)) = self.tx.wait_used(|| false) else { return false };
            self.tx_busy &= !(1 << ((id / 2) % u32::from(TX_SLOTS)));
        }
        true
    }

    /// The next received packet, if one is there (the previous one's buffer is posted again).
    pub fn recv(&mut self) -> Option<Packet> {
        self.poll_events();
        if let Some(slot) = self.rx_held.take() {
            self.rx.push(2 * slot);
            self.rx_unnotified += 1;
            if self.rx_unnotified >= 8 {
                self.dev.notify(0);
                self.rx_unnotified = 0;
            }
        }
        let Some((id, used_len)) = self.rx.try_used() else {
            if self.rx_unnotified > 0 {
                self.dev.notify(0);
                self.rx_unnotified = 0;
            }
            return None;
        };
        if id == u32::from(RX_RAW_DESC) {
            self.raw_rx_used = Some(used_len);
            return None;
        }
        if id % 2 != 0 || id >= u32::from(RX_SLOTS) * 2 {
            self.bad_used += 1;
            return None;
        }
        let slot = (id / 2) as u16;
        self.rx_held = Some(slot);
        let hdr = Hdr::decode(dma::slice(RX_HDRS + u64::from(slot) * 64, HDR))?;
        if (used_len as usize) < HDR {
            self.bad_used += 1;
            return None;
        }
        let len = (hdr.len as usize).min(used_len as usize - HDR).min(RX_BUF as usize);
        let data = dma::slice(RX_DATA + u64::from(slot) * u64::from(RX_BUF), len);
        Some(Packet { hdr, data })
    }

    /// Posts one hand-made device-writable RX buffer (after the ones already posted); its
    /// return shows in `raw_rx_used`.
    pub fn post_rx_raw(&mut self, addr: u64, len: u32) {
        self.raw_rx_used = None;
        self.rx.set_desc(RX_RAW_DESC, addr, len, DESC_F_WRITE, 0);
        self.rx.push(RX_RAW_DESC);
        self.dev.notify(0);
    }

    /// Counts and re-posts event buffers (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET re-reads the CID).
    fn poll_events(&mut self) {
        while let Some((id, len)) = self.event.try_used() {
            self.events += 1;
            let slot = u64::from(id % u32::from(EVENT_SLOTS));
            self.last_event = if len >= 4 {
                let b = dma::slice(EVENT_BUFS + slot * 8, 4);
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            } else {
                u32::MAX
            };
            self.cid = self.dev.config_u64(0);
            self.event.push((id % u32::from(EVENT_SLOTS)) as u16);
            self.dev.notify(2);
        }
    }
}
