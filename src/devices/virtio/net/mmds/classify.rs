//! Which guest frames belong to the MMDS stack: an ARP packet about the MMDS address, or an
//! IPv4 packet to it carrying TCP to port 80 (or any fragment to it: a fragment's port cannot
//! be known, and the stack takes none). Reads fixed offsets only; never allocates.

use std::net::Ipv4Addr;

const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const ETH_HDR: usize = 14;
const PROTO_TCP: u8 = 6;

/// What a guest frame is to the MMDS stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameClass {
    /// Not MMDS traffic.
    Other,
    /// ARP about the MMDS address.
    Arp,
    /// A TCP segment to the MMDS address and port 80.
    Tcp {
        /// SYN set, ACK clear: a new connection.
        syn: bool,
    },
    /// An IPv4 fragment to the MMDS address.
    Fragment,
}

/// Whether `frame` is an IPv4 packet to `mmds` (any protocol, fragments too): on an interface
/// with MMDS, such a frame the stack did not take is dropped, never sent to the tap.
pub fn ipv4_to(frame: &[u8], mmds: Ipv4Addr) -> bool {
    frame.len() >= ETH_HDR + 20
        && [frame[12], frame[13]] == ETHERTYPE_IPV4
        && frame[ETH_HDR..ETH_HDR + 20][16..20] == mmds.octets()
}

/// Classifies `frame` against the MMDS address `mmds`.
pub fn classify(frame: &[u8], mmds: Ipv4Addr) -> FrameClass {
    if frame.len() < ETH_HDR {
        return FrameClass::Other;
    }
    let payload = &frame[ETH_HDR..];
    match [frame[12], frame[13]] {
        ETHERTYPE_ARP => {
            // Ethernet/IPv4 ARP: target protocol address at 24..28.
            if payload.len() >= 28
                && payload[0..2] == [0, 1]
                && payload[2..4] == ETHERTYPE_IPV4
                && payload[4] == 6
                && payload[5] == 4
                && payload[24..28] == mmds.octets()
            {
                FrameClass::Arp
            } else {
                FrameClass::Other
            }
        }
        ETHERTYPE_IPV4 => {
            if payload.len() < 20 || payload[0] >> 4 != 4 || payload[16..20] != mmds.octets() {
                return FrameClass::Other;
            }
            let ihl = usize::from(payload[0] & 0x0f) * 4;
            let more_fragments = payload[6] & 0x20 != 0;
            let offset = u16::from_be_bytes([payload[6] & 0x1f, payload[7]]);
            if payload[9] != PROTO_TCP {
                return FrameClass::Other;
            }
            if more_fragments || offset != 0 {
                return FrameClass::Fragment;
            }
            let Some(tcp) = payload.get(ihl..).filter(|_| ihl >= 20) else {
                return FrameClass::Other;
            };
            if tcp.len() < 14 || tcp[2..4] != [0, 80] {
                return FrameClass::Other;
            }
            let flags = tcp[13];
            FrameClass::Tcp {
                syn: flags & 0x02 != 0 && flags & 0x10 == 0,
            }
        }
        _ => FrameClass::Other,
    }
}
