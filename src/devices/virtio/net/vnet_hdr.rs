//! The guest's virtio-net header on transmit, checked against the frame it describes and
//! rebuilt before the frame reaches the tap.
//!
//! The header is not data the VMM may pass on blindly: the host kernel (or the NIC behind it)
//! acts on it after the firewall has judged the frame. With VIRTIO_NET_HDR_F_NEEDS_CSUM it
//! writes a 16-bit sum at `csum_start + csum_offset`, which a guest could aim at a port or an
//! address the firewall already allowed; with a GSO type it cuts the frame into segments of
//! `gso_size`, which a guest could set to one byte. So a header is accepted only when:
//! - its flags are NEEDS_CSUM or nothing (DATA_VALID and RSC_INFO are for received frames),
//!   and NEEDS_CSUM only when the driver accepted VIRTIO_NET_F_CSUM;
//! - with NEEDS_CSUM, the frame is TCP or UDP over IPv4 or IPv6 (not a fragment) and
//!   `csum_start` is where its L4 header starts and `csum_offset` is its checksum field
//!   (16 for TCP, 6 for UDP): the only bytes the host then writes are the checksum's;
//! - a GSO type is TCPV4 or TCPV6 (UFO, USO and ECN are never offered), the driver accepted
//!   the matching HOST_TSO feature, the frame is TCP over that IP version, NEEDS_CSUM is set,
//!   and `gso_size` is at least [`MIN_GSO_SIZE`] (the smallest TCP MSS Linux uses).
//!
//! What goes to the tap is a header rebuilt from the checked values (`hdr_len` set to the
//! real end of the TCP header, `num_buffers` 0), never the guest's bytes.

use super::tap::VNET_HDR_LEN;
use etherparse::{SlicedPacket, TransportSlice};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};

/// The smallest `gso_size` accepted (Linux's TCP_MIN_MSS).
pub const MIN_GSO_SIZE: u16 = 88;
/// TCP's checksum field, from the start of its header.
const TCP_CSUM_OFFSET: u16 = 16;
/// UDP's checksum field, from the start of its header.
const UDP_CSUM_OFFSET: u16 = 6;

/// Why a transmit header was refused (the frame is dropped and counted).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VnetHdrError {
    /// Fewer bytes than a header.
    #[error("The chain is shorter than the virtio-net header")]
    Short,
    /// Flags other than NEEDS_CSUM, or NEEDS_CSUM without VIRTIO_NET_F_CSUM.
    #[error("Header flags {0:#04x} are not allowed on transmit with the accepted features")]
    Flags(u8),
    /// A GSO type never offered, or one whose feature the driver did not accept.
    #[error("GSO type {0:#04x} is not allowed with the accepted features")]
    GsoType(u8),
    /// GSO without NEEDS_CSUM.
    #[error("GSO without checksum offload")]
    GsoWithoutCsum,
    /// A `gso_size` small enough to make the host cut a frame into thousands of segments.
    #[error("GSO size {0} is below {MIN_GSO_SIZE}")]
    GsoSize(u16),
    /// The frame is not what the header says it is (not TCP/UDP over IP, a fragment, or the
    /// other IP version for the GSO type).
    #[error("The frame does not match the header's offload ({0})")]
    Mismatch(&'static str),
    /// `csum_start`/`csum_offset` do not point at the L4 checksum field.
    #[error("Checksum offload at {start}+{offset}, but the L4 checksum field is at {want_start}+{want_offset}")]
    CsumPlace {
        /// The guest's `csum_start`.
        start: u16,
        /// The guest's `csum_offset`.
        offset: u16,
        /// Where the L4 header starts.
        want_start: usize,
        /// The checksum field within it.
        want_offset: u16,
    },
}

/// The offload features the driver accepted (bits of the negotiated feature word).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxOffloads {
    /// VIRTIO_NET_F_CSUM.
    pub csum: bool,
    /// VIRTIO_NET_F_HOST_TSO4.
    pub tso4: bool,
    /// VIRTIO_NET_F_HOST_TSO6.
    pub tso6: bool,
}

impl TxOffloads {
    /// From the driver's accepted features.
    pub fn from_features(features: u64) -> Self {
        let has = |bit: u32| features & (1 << bit) != 0;
        Self {
            csum: has(VIRTIO_NET_F_CSUM),
            tso4: has(VIRTIO_NET_F_HOST_TSO4),
            tso6: has(VIRTIO_NET_F_HOST_TSO6),
        }
    }
}

/// A checked transmit header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxHeader {
    /// VIRTIO_NET_HDR_F_NEEDS_CSUM or 0.
    pub flags: u8,
    /// VIRTIO_NET_HDR_GSO_NONE, _TCPV4 or _TCPV6.
    pub gso_type: u8,
    /// Ethernet, IP and TCP headers (0 without GSO).
    pub hdr_len: u16,
    /// Segment size (0 without GSO).
    pub gso_size: u16,
    /// Where the checksum starts (0 without NEEDS_CSUM).
    pub csum_start: u16,
    /// The checksum field within the L4 header (0 without NEEDS_CSUM).
    pub csum_offset: u16,
}

impl TxHeader {
    /// Whether the frame is a GSO frame (judged by its headers only, it may be up to 64 KiB).
    pub fn is_gso(&self) -> bool {
        u32::from(self.gso_type) != VIRTIO_NET_HDR_GSO_NONE
    }

    /// The frames the host sends for this one of `frame_len` bytes (Ethernet onwards): one,
    /// or for GSO one per `gso_size` bytes of payload after the headers.
    pub fn segments(&self, frame_len: u64) -> u64 {
        if !self.is_gso() || self.gso_size == 0 {
            return 1;
        }
        let payload = frame_len.saturating_sub(u64::from(self.hdr_len));
        payload.div_ceil(u64::from(self.gso_size)).max(1)
    }

    /// The header as the tap reads it (little-endian, virtio 1.x, `num_buffers` 0).
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut out = [0u8; VNET_HDR_LEN];
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        out
    }
}

fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// Where the frame's L4 header starts, its header length and checksum field, and its IP
/// version; an error unless it is unfragmented TCP or UDP over IPv4 or IPv6.
fn l4_of(frame: &[u8]) -> Result<(usize, usize, u16, bool, bool), VnetHdrError> {
    let packet =
        SlicedPacket::from_ethernet(frame).map_err(|_| VnetHdrError::Mismatch("not parseable"))?;
    let is_v6 = match &packet.net {
        Some(etherparse::NetSlice::Ipv4(_)) => false,
        Some(etherparse::NetSlice::Ipv6(_)) => true,
        _ => return Err(VnetHdrError::Mismatch("not IP")),
    };
    let (slice, header_len, csum_offset, is_tcp) = match &packet.transport {
        Some(TransportSlice::Tcp(tcp)) => (tcp.slice(), tcp.header_len(), TCP_CSUM_OFFSET, true),
        Some(TransportSlice::Udp(udp)) => (udp.slice(), 8, UDP_CSUM_OFFSET, false),
        // Fragments have no transport slice: their L4 header may not be in this frame.
        _ => return Err(VnetHdrError::Mismatch("not TCP or UDP, or a fragment")),
    };
    let start = (slice.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
    Ok((start, header_len, csum_offset, is_tcp, is_v6))
}

/// Checks the guest's header (`hdr`, at least [`VNET_HDR_LEN`] bytes) against `frame` (the
/// Ethernet frame after it) and the accepted offloads; returns the header to send.
pub fn check_tx(hdr: &[u8], frame: &[u8], offloads: TxOffloads) -> Result<TxHeader, VnetHdrError> {
    if hdr.len() < VNET_HDR_LEN {
        return Err(VnetHdrError::Short);
    }
    let flags = hdr[0];
    let gso_type = hdr[1];
    let needs_csum = match u32::from(flags) {
        0 => false,
        VIRTIO_NET_HDR_F_NEEDS_CSUM if offloads.csum => true,
        _ => return Err(VnetHdrError::Flags(flags)),
    };
    let want_v6 = match u32::from(gso_type) {
        VIRTIO_NET_HDR_GSO_NONE => None,
        VIRTIO_NET_HDR_GSO_TCPV4 if offloads.tso4 => Some(false),
        VIRTIO_NET_HDR_GSO_TCPV6 if offloads.tso6 => Some(true),
        _ => return Err(VnetHdrError::GsoType(gso_type)),
    };
    if want_v6.is_some() && !needs_csum {
        return Err(VnetHdrError::GsoWithoutCsum);
    }
    let gso_size = le16(hdr, 4);
    if want_v6.is_some() && gso_size < MIN_GSO_SIZE {
        return Err(VnetHdrError::GsoSize(gso_size));
    }
    if !needs_csum {
        return Ok(TxHeader {
            flags: 0,
            gso_type: 0,
            hdr_len: 0,
            gso_size: 0,
            csum_start: 0,
            csum_offset: 0,
        });
    }
    let (start, header_len, want_offset, is_tcp, is_v6) = l4_of(frame)?;
    if let Some(want_v6) = want_v6 {
        if !is_tcp {
            return Err(VnetHdrError::Mismatch("GSO TCP type on a UDP frame"));
        }
        if want_v6 != is_v6 {
            return Err(VnetHdrError::Mismatch("GSO type of the other IP version"));
        }
    }
    let csum_start = le16(hdr, 6);
    let csum_offset = le16(hdr, 8);
    if usize::from(csum_start) != start || csum_offset != want_offset {
        return Err(VnetHdrError::CsumPlace {
            start: csum_start,
            offset: csum_offset,
            want_start: start,
            want_offset,
        });
    }
    let (hdr_len, gso_size) = match want_v6 {
        // The L4 header lies inside a frame of at most 64 KiB, so this fits.
        Some(_) => (
            u16::try_from(start + header_len).unwrap_or(u16::MAX),
            gso_size,
        ),
        None => (0, 0),
    };
    Ok(TxHeader {
        flags,
        gso_type,
        hdr_len,
        gso_size,
        csum_start,
        csum_offset,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use etherparse::PacketBuilder;

    use super::*;

    const ALL: TxOffloads = TxOffloads {
        csum: true,
        tso4: true,
        tso6: true,
    };

    fn udp4(dst_port: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
            .udp(40000, dst_port)
            .write(&mut out, &[0u8; 32])
            .unwrap();
        out
    }

    fn tcp6(payload: usize) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(40000, 443, 1, 65535)
            .write(&mut out, &vec![0u8; payload])
            .unwrap();
        out
    }

    fn hdr(flags: u8, gso: u8, gso_size: u16, start: u16, offset: u16) -> [u8; 12] {
        TxHeader {
            flags,
            gso_type: gso,
            hdr_len: 0xffff,
            gso_size,
            csum_start: start,
            csum_offset: offset,
        }
        .to_bytes()
    }

    #[test]
    fn a_checksum_aimed_at_the_destination_port_is_refused() {
        // The attack: UDP to port 53 (allowed), with the host's checksum write aimed at the
        // destination port field (L4 start + 2) so that it would arrive on another port.
        let frame = udp4(53);
        let err = check_tx(&hdr(1, 0, 0, 34, 2), &frame, ALL).unwrap_err();
        assert!(matches!(
            err,
            VnetHdrError::CsumPlace {
                want_start: 34,
                want_offset: 6,
                ..
            }
        ));
        // Or at the source address in the IP header.
        assert!(check_tx(&hdr(1, 0, 0, 26, 0), &frame, ALL).is_err());
        // The honest placement passes and is rebuilt.
        let ok = check_tx(&hdr(1, 0, 0, 34, 6), &frame, ALL).unwrap();
        assert_eq!((ok.csum_start, ok.csum_offset, ok.hdr_len), (34, 6, 0));
    }

    #[test]
    fn checksum_offload_needs_the_feature_and_tcp_or_udp() {
        let frame = udp4(53);
        let no_csum = TxOffloads::default();
        assert_eq!(
            check_tx(&hdr(1, 0, 0, 34, 6), &frame, no_csum),
            Err(VnetHdrError::Flags(1))
        );
        let mut icmp = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut icmp, &[0u8; 8])
            .unwrap();
        assert!(matches!(
            check_tx(&hdr(1, 0, 0, 34, 2), &icmp, ALL),
            Err(VnetHdrError::Mismatch(_))
        ));
    }

    #[test]
    fn receive_only_flags_and_unknown_bits_are_refused() {
        let frame = udp4(53);
        for flags in [2u8, 4, 3, 0x80] {
            assert_eq!(
                check_tx(&hdr(flags, 0, 0, 34, 6), &frame, ALL),
                Err(VnetHdrError::Flags(flags))
            );
        }
    }

    #[test]
    fn gso_types_never_offered_or_not_accepted_are_refused() {
        let frame = tcp6(1000);
        for gso in [3u8, 5, 0x81, 0x84, 2] {
            assert_eq!(
                check_tx(&hdr(1, gso, 1000, 54, 16), &frame, ALL),
                Err(VnetHdrError::GsoType(gso))
            );
        }
        let tso4_only = TxOffloads { tso6: false, ..ALL };
        assert_eq!(
            check_tx(&hdr(1, 4, 1000, 54, 16), &frame, tso4_only),
            Err(VnetHdrError::GsoType(4))
        );
    }

    #[test]
    fn gso_must_match_the_frame_and_carry_a_sane_segment_size() {
        let frame = tcp6(3000);
        // TCPV4 on an IPv6 frame.
        assert!(matches!(
            check_tx(&hdr(1, 1, 1000, 54, 16), &frame, ALL),
            Err(VnetHdrError::Mismatch(_))
        ));
        // GSO without NEEDS_CSUM.
        assert_eq!(
            check_tx(&hdr(0, 4, 1000, 54, 16), &frame, ALL),
            Err(VnetHdrError::GsoWithoutCsum)
        );
        // One-byte segments: thousands of frames out of one.
        assert_eq!(
            check_tx(&hdr(1, 4, 1, 54, 16), &frame, ALL),
            Err(VnetHdrError::GsoSize(1))
        );
        // TCP over UDP's GSO type is refused too.
        assert!(check_tx(&hdr(1, 4, 1000, 34, 6), &udp4(53), ALL).is_err());
        let ok = check_tx(&hdr(1, 4, 1400, 54, 16), &frame, ALL).unwrap();
        assert_eq!(ok.hdr_len, 74);
        assert_eq!(ok.gso_size, 1400);
        assert!(ok.is_gso());
        // 3,000 bytes of payload after 74 bytes of headers: three segments on the wire.
        assert_eq!(ok.segments(frame.len() as u64), 3);
        let plain = check_tx(&hdr(0, 0, 0, 0, 0), &udp4(53), ALL).unwrap();
        assert_eq!(plain.segments(74), 1);
    }

    #[test]
    fn the_rebuilt_header_drops_what_the_guest_sent_beyond_the_checked_fields() {
        let frame = udp4(53);
        let mut guest = hdr(0, 0, 999, 7, 9);
        guest[10] = 0xff; // num_buffers
        let ok = check_tx(&guest, &frame, ALL).unwrap();
        assert_eq!(ok.to_bytes(), [0u8; 12]);
    }

    #[test]
    fn a_fragment_cannot_carry_checksum_offload() {
        let mut frame = udp4(53);
        // More-fragments flag in the IPv4 header (offset 14 + 6).
        frame[20] |= 0x20;
        assert!(matches!(
            check_tx(&hdr(1, 0, 0, 34, 6), &frame, ALL),
            Err(VnetHdrError::Mismatch(_))
        ));
    }
}
