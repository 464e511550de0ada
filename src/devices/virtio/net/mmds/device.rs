//! The virtual link between the MMDS stack and the guest: a smoltcp [`Device`] with room for
//! one received frame (the one being handed in) and a bounded queue of frames for the guest.
//!
//! When the queue is full the device refuses to transmit and smoltcp keeps its data for a
//! later poll (TCP retransmits), so memory stays bounded whatever the guest does. Every IPv4
//! frame leaving gets the configured TTL (the sockets already set it; this also covers the
//! RSTs smoltcp sends on its own) with its header checksum recomputed.

use std::collections::VecDeque;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Largest frame handed to the stack: a maximal IPv4 packet with its Ethernet header (a
/// segmentation-offloaded frame from the guest fits).
pub const MAX_RX_FRAME: usize = 14 + 65535;
/// Frames the stack may emit: a standard Ethernet MTU.
pub const MTU: usize = 1514;

/// The stack's side of the link.
#[derive(Debug)]
pub struct QueueDevice {
    rx: Vec<u8>,
    rx_len: Option<usize>,
    tx: VecDeque<Vec<u8>>,
    tx_capacity: usize,
    ttl: u8,
    /// Transmits refused because the queue was full.
    pub tx_full: u64,
}

impl QueueDevice {
    /// A device whose guest-bound queue holds at most `tx_capacity` frames, stamping `ttl`.
    pub fn new(tx_capacity: usize, ttl: u8) -> Self {
        Self {
            rx: vec![0; MAX_RX_FRAME],
            rx_len: None,
            tx: VecDeque::with_capacity(tx_capacity),
            tx_capacity,
            ttl,
            tx_full: 0,
        }
    }

    /// Hands `frame` to the stack's next poll; false (and nothing stored) if it is too big.
    pub fn put_rx(&mut self, frame: &[u8]) -> bool {
        if frame.len() > self.rx.len() {
            return false;
        }
        self.rx[..frame.len()].copy_from_slice(frame);
        self.rx_len = Some(frame.len());
        true
    }

    /// The received frame's destination MAC becomes `mac` (frames are consumed by IP address,
    /// whatever next hop the guest chose).
    pub fn set_rx_dst_mac(&mut self, mac: [u8; 6]) {
        if self.rx_len.is_some_and(|len| len >= 6) {
            self.rx[..6].copy_from_slice(&mac);
        }
    }

    /// Drops a frame the stack did not take.
    pub fn clear_rx(&mut self) {
        self.rx_len = None;
    }

    /// The oldest frame for the guest.
    pub fn pop_tx(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// Frames waiting for the guest.
    pub fn tx_len(&self) -> usize {
        self.tx.len()
    }
}

/// Sets the TTL of the IPv4 packet in an Ethernet frame and recomputes its header checksum.
fn stamp_ttl(frame: &mut [u8], ttl: u8) {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let ip = &mut frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl || ip[8] == ttl {
        return;
    }
    ip[8] = ttl;
    ip[10] = 0;
    ip[11] = 0;
    let mut sum: u32 = 0;
    for pair in ip[..ihl].chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let check = !(sum as u16);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
}

/// A received frame.
pub struct RxToken<'a>(&'a [u8]);

/// A slot in the guest-bound queue.
pub struct TxToken<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
    ttl: u8,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut frame = vec![0; len.min(MTU)];
        let r = f(&mut frame);
        stamp_ttl(&mut frame, self.ttl);
        self.queue.push_back(frame);
        r
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        // The reply slot must exist too; without it the frame waits for the next poll.
        if self.rx_len.is_some() && self.tx.len() >= self.tx_capacity {
            self.tx_full += 1;
            return None;
        }
        let len = self.rx_len.take()?;
        Some((
            RxToken(&self.rx[..len]),
            TxToken {
                queue: &mut self.tx,
                ttl: self.ttl,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        if self.tx.len() >= self.tx_capacity {
            self.tx_full += 1;
            return None;
        }
        Some(TxToken {
            queue: &mut self.tx,
            ttl: self.ttl,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(1);
        // A guest with checksum offload sends TCP segments with partial checksums: do not
        // verify them (the frame never leaves the host); compute ours in full.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Both;
        checksum.tcp = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_ttl_keeps_the_ipv4_header_checksum_valid() {
        let builder = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([1, 2, 3, 4], [5, 6, 7, 8], 64)
            .udp(1, 2);
        let mut frame = Vec::new();
        builder.write(&mut frame, b"x").unwrap();
        stamp_ttl(&mut frame, 1);
        let (ip, _) = etherparse::Ipv4Header::from_slice(&frame[14..]).unwrap();
        assert_eq!(ip.time_to_live, 1);
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    }
}
