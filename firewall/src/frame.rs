//! Header views of an Ethernet frame (Ethernet, ARP, IPv4, IPv6 and its extension headers,
//! TCP, UDP, ICMP, ICMPv6), parsed with `etherparse`. Only headers are read, so offloaded (GSO)
//! frames and header-only prefixes parse like small frames; but every header is read within
//! the IP datagram (IPv4 total length, IPv6 payload length), and that length must agree with the
//! frame's full length: no more than the frame, and no less except for Ethernet padding up to
//! the 60-byte minimum frame. IPv4 options are walked (source routes refused) and IPv6 routing
//! headers that would route (type 0, or segments left) are refused.

use etherparse::{
    ArpHardwareId, ArpPacketSlice, EtherType, Ethernet2HeaderSlice, IcmpEchoHeader, Icmpv4Slice,
    Icmpv6Slice, IpAuthHeaderSlice, IpNumber, Ipv4HeaderSlice, Ipv6FragmentHeaderSlice,
    Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, TcpHeaderSlice, UdpHeaderSlice,
};

use crate::counters::DropReason;
use crate::net_types::{Addr, MacAddr};

/// The most IPv6 extension headers walked before a packet is called malformed.
pub(crate) const MAX_IPV6_EXTENSION_HEADERS: usize = 8;

const ETHERNET_HEADER_LEN: usize = 14;
/// The shortest Ethernet frame without its FCS: shorter frames are padded up to it.
const ETHERNET_MIN_FRAME: usize = 60;
const IPV6_HEADER_LEN: usize = 40;

const IPV4_OPTION_END: u8 = 0;
const IPV4_OPTION_NOP: u8 = 1;
const IPV4_OPTION_LSRR: u8 = 131;
const IPV4_OPTION_SSRR: u8 = 137;

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;

pub(crate) const PROTO_ICMP: u8 = 1;
pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;
pub(crate) const PROTO_ICMPV6: u8 = 58;

/// Why a frame could not be parsed; every one is a `malformed` drop.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FrameError {
    #[error("Frame shorter than an Ethernet header")]
    TruncatedEthernet,
    #[error("VLAN-tagged frame")]
    VlanTagged,
    #[error("Truncated or non-Ethernet/IPv4 ARP packet")]
    Arp,
    #[error("Truncated or invalid IPv4 header")]
    Ipv4Header,
    #[error("Truncated or invalid IPv6 header")]
    Ipv6Header,
    #[error("Truncated IPv6 extension header")]
    Ipv6ExtensionHeader,
    #[error("More than {MAX_IPV6_EXTENSION_HEADERS} IPv6 extension headers")]
    TooManyExtensionHeaders,
    #[error("Truncated or invalid TCP header")]
    Tcp,
    #[error("Truncated UDP header")]
    Udp,
    #[error("Truncated ICMP header")]
    Icmp,
    #[error("Malformed IPv4 options")]
    Ipv4Options,
    #[error("IP length disagrees with the frame length")]
    LengthMismatch,
    #[error("Source-routed packet")]
    SourceRoute,
    #[error("TCP fragment overlapping the first fragment's header (RFC 1858)")]
    OverlappingFragment,
}

impl FrameError {
    /// The drop counter a frame that fails to parse goes to.
    pub fn drop_reason(self) -> DropReason {
        match self {
            FrameError::LengthMismatch => DropReason::LengthMismatch,
            FrameError::SourceRoute => DropReason::SourceRoute,
            FrameError::OverlappingFragment => DropReason::Fragment,
            _ => DropReason::Malformed,
        }
    }
}

/// An Ethernet frame's addresses and what it carries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ParsedFrame<'a> {
    pub src_mac: MacAddr,
    pub payload: Payload<'a>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Payload<'a> {
    Arp(ArpView),
    Ip(IpPacket<'a>),
    /// Neither ARP nor IP (ether type or 802.3 length).
    Other,
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ArpView {
    pub operation: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: [u8; 4],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// Not fragmented (or an IPv6 atomic fragment).
    Whole,
    /// Offset 0 with more to come: carries the transport header, filtered normally.
    First,
    /// Offset > 0: no transport header.
    Later,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: u8,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// ICMP or ICMPv6 (see `IpPacket::protocol`); `rest` is bytes 4..8 (echo id and sequence).
    Icmp {
        icmp_type: u8,
        rest: [u8; 4],
    },
    /// Another protocol, or a non-first fragment.
    Other,
}

/// The IP layer and transport header of a packet; `l4` starts at the transport header and
/// ends with the datagram (or with the bytes given, for a header prefix).
#[derive(Clone, Copy, Debug)]
pub(crate) struct IpPacket<'a> {
    pub src: Addr,
    pub dst: Addr,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    /// The datagram's length as its header declares it (IPv6: 40 + payload length).
    pub ip_len: usize,
    pub protocol: u8,
    pub fragment: Fragment,
    pub transport: Transport,
    pub l4: &'a [u8],
}

impl IpPacket<'_> {
    /// The ICMP echo identifier, for echo requests and replies of the packet's family.
    pub fn echo_id(&self) -> Option<u16> {
        let Transport::Icmp { icmp_type, rest } = self.transport else {
            return None;
        };
        let echo = if self.src.v6 {
            matches!(icmp_type, 128 | 129)
        } else {
            matches!(icmp_type, 0 | 8)
        };
        echo.then(|| IcmpEchoHeader::from_bytes(rest).id)
    }
}

/// Parses the headers of an Ethernet frame: `frame` is the frame or a prefix of it,
/// `frame_len` the full frame's length.
pub(crate) fn parse_frame(frame: &[u8], frame_len: usize) -> Result<ParsedFrame<'_>, FrameError> {
    let ethernet =
        Ethernet2HeaderSlice::from_slice(frame).map_err(|_| FrameError::TruncatedEthernet)?;
    let rest = &frame[ethernet.slice().len()..];
    let wire = WireLen(frame_len.max(frame.len()));
    let payload = match ethernet.ether_type() {
        EtherType::ARP => Payload::Arp(parse_arp(rest)?),
        EtherType::IPV4 => Payload::Ip(parse_ipv4(rest, wire)?),
        EtherType::IPV6 => Payload::Ip(parse_ipv6(rest, wire)?),
        EtherType::VLAN_TAGGED_FRAME
        | EtherType::PROVIDER_BRIDGING
        | EtherType::VLAN_DOUBLE_TAGGED_FRAME => return Err(FrameError::VlanTagged),
        _ => Payload::Other,
    };
    Ok(ParsedFrame {
        src_mac: ethernet.source(),
        payload,
    })
}

/// The full length of the frame on the wire, Ethernet header included.
#[derive(Clone, Copy, Debug)]
struct WireLen(usize);

impl WireLen {
    /// Checks a datagram's declared length against the frame: it must fit, and only Ethernet
    /// padding (up to the minimum frame) may follow it.
    fn check(self, ip_len: usize) -> Result<(), FrameError> {
        let ip_end = ETHERNET_HEADER_LEN + ip_len;
        if ip_end > self.0 || (ip_end < self.0 && self.0 > ETHERNET_MIN_FRAME) {
            return Err(FrameError::LengthMismatch);
        }
        Ok(())
    }
}

fn parse_arp(bytes: &[u8]) -> Result<ArpView, FrameError> {
    let arp = ArpPacketSlice::from_slice(bytes).map_err(|_| FrameError::Arp)?;
    if arp.hw_addr_type() != ArpHardwareId::ETHERNET
        || arp.proto_addr_type() != EtherType::IPV4
        || arp.hw_addr_size() != 6
        || arp.proto_addr_size() != 4
    {
        return Err(FrameError::Arp);
    }
    let sender_mac = arp
        .sender_hw_addr()
        .try_into()
        .map_err(|_| FrameError::Arp)?;
    let sender_ip = arp
        .sender_protocol_addr()
        .try_into()
        .map_err(|_| FrameError::Arp)?;
    Ok(ArpView {
        operation: arp.operation().0,
        sender_mac,
        sender_ip,
    })
}

fn parse_ipv4(bytes: &[u8], wire: WireLen) -> Result<IpPacket<'_>, FrameError> {
    let header = Ipv4HeaderSlice::from_slice(bytes).map_err(|_| FrameError::Ipv4Header)?;
    let header_len = header.slice().len();
    let total_len = usize::from(header.total_len());
    if total_len < header_len {
        return Err(FrameError::Ipv4Header);
    }
    check_ipv4_options(&header.slice()[20..])?;
    let offset = header.fragments_offset().value();
    let fragment = if offset != 0 {
        Fragment::Later
    } else if header.more_fragments() {
        Fragment::First
    } else {
        Fragment::Whole
    };
    let protocol = header.protocol().0;
    if offset == 1 && protocol == PROTO_TCP {
        return Err(FrameError::OverlappingFragment);
    }
    let l4 = &bytes[header_len..total_len.min(bytes.len())];
    let transport = match (fragment, protocol) {
        (Fragment::Later, _) => Transport::Other,
        (_, PROTO_ICMP) => {
            let icmp = Icmpv4Slice::from_slice(l4).map_err(|_| FrameError::Icmp)?;
            Transport::Icmp {
                icmp_type: icmp.type_u8(),
                rest: icmp.bytes5to8(),
            }
        }
        _ => parse_transport(protocol, l4)?,
    };
    // After the headers: a truncated header is malformed, whatever the lengths say.
    wire.check(total_len)?;
    Ok(IpPacket {
        src: Addr::v4(header.source()),
        dst: Addr::v4(header.destination()),
        hop_limit: header.ttl(),
        ip_len: total_len,
        protocol,
        fragment,
        transport,
        l4,
    })
}

/// Walks IPv4 options: malformed ones and source routes (loose or strict) are refused; record
/// route and timestamps do not change the path and pass.
fn check_ipv4_options(mut options: &[u8]) -> Result<(), FrameError> {
    while let Some(&kind) = options.first() {
        match kind {
            IPV4_OPTION_END => return Ok(()),
            IPV4_OPTION_NOP => {
                options = &options[1..];
                continue;
            }
            IPV4_OPTION_LSRR | IPV4_OPTION_SSRR => return Err(FrameError::SourceRoute),
            _ => {}
        }
        let len = usize::from(*options.get(1).ok_or(FrameError::Ipv4Options)?);
        if len < 2 || len > options.len() {
            return Err(FrameError::Ipv4Options);
        }
        options = &options[len..];
    }
    Ok(())
}

fn parse_ipv6(bytes: &[u8], wire: WireLen) -> Result<IpPacket<'_>, FrameError> {
    let header = Ipv6HeaderSlice::from_slice(bytes).map_err(|_| FrameError::Ipv6Header)?;
    let ip_len = IPV6_HEADER_LEN + usize::from(header.payload_length());
    let mut next = header.next_header();
    let mut rest = &bytes[IPV6_HEADER_LEN..ip_len.min(bytes.len())];
    let mut fragment = Fragment::Whole;
    let mut walked = 0;
    while is_ipv6_extension(next) && fragment != Fragment::Later {
        if walked == MAX_IPV6_EXTENSION_HEADERS {
            return Err(FrameError::TooManyExtensionHeaders);
        }
        walked += 1;
        let bad = |_| FrameError::Ipv6ExtensionHeader;
        let consumed = if next == IpNumber::IPV6_FRAGMENTATION_HEADER {
            let frag = Ipv6FragmentHeaderSlice::from_slice(rest).map_err(bad)?;
            if frag.fragment_offset().value() != 0 {
                fragment = Fragment::Later;
            } else if frag.more_fragments() {
                fragment = Fragment::First;
            }
            next = frag.next_header();
            frag.slice().len()
        } else if next == IpNumber::AUTHENTICATION_HEADER {
            let auth =
                IpAuthHeaderSlice::from_slice(rest).map_err(|_| FrameError::Ipv6ExtensionHeader)?;
            next = auth.next_header();
            auth.slice().len()
        } else {
            let ext = Ipv6RawExtHeaderSlice::from_slice(rest).map_err(bad)?;
            if next == IpNumber::IPV6_ROUTE_HEADER && routes(ext.slice()) {
                return Err(FrameError::SourceRoute);
            }
            next = ext.next_header();
            ext.slice().len()
        };
        rest = &rest[consumed..];
    }
    let protocol = next.0;
    let transport = match (fragment, protocol) {
        (Fragment::Later, _) => Transport::Other,
        (_, PROTO_ICMPV6) => {
            let icmp = Icmpv6Slice::from_slice(rest).map_err(|_| FrameError::Icmp)?;
            Transport::Icmp {
                icmp_type: icmp.type_u8(),
                rest: icmp.bytes5to8(),
            }
        }
        _ => parse_transport(protocol, rest)?,
    };
    wire.check(ip_len)?;
    Ok(IpPacket {
        src: Addr::v6(header.source()),
        dst: Addr::v6(header.destination()),
        hop_limit: header.hop_limit(),
        ip_len,
        protocol,
        fragment,
        transport,
        l4: rest,
    })
}

/// Whether an IPv6 routing header would send the packet elsewhere than its destination: the
/// deprecated type 0 (RFC 5095) always, any other type while segments are left.
fn routes(routing_header: &[u8]) -> bool {
    const ROUTING_TYPE_0: u8 = 0;
    let routing_type = routing_header.get(2).copied().unwrap_or(ROUTING_TYPE_0);
    let segments_left = routing_header.get(3).copied().unwrap_or(0);
    routing_type == ROUTING_TYPE_0 || segments_left > 0
}

fn is_ipv6_extension(next: IpNumber) -> bool {
    next == IpNumber::IPV6_FRAGMENTATION_HEADER
        || next == IpNumber::AUTHENTICATION_HEADER
        || Ipv6RawExtHeaderSlice::header_type_supported(next)
}

fn parse_transport(protocol: u8, l4: &[u8]) -> Result<Transport, FrameError> {
    Ok(match protocol {
        PROTO_TCP => {
            let tcp = TcpHeaderSlice::from_slice(l4).map_err(|_| FrameError::Tcp)?;
            Transport::Tcp {
                src_port: tcp.source_port(),
                dst_port: tcp.destination_port(),
                flags: tcp.slice()[13],
            }
        }
        PROTO_UDP => {
            let udp = UdpHeaderSlice::from_slice(l4).map_err(|_| FrameError::Udp)?;
            Transport::Udp {
                src_port: udp.source_port(),
                dst_port: udp.destination_port(),
            }
        }
        _ => Transport::Other,
    })
}

/// The flow an ICMP error message is about: the header it quotes, as the quoted packet's sender
/// saw it. Only its addresses and the first 8 bytes of its transport header are present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QuotedPacket {
    pub src: Addr,
    pub dst: Addr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

/// Whether an ICMP(v6) type is an error that quotes the packet that caused it.
pub(crate) fn is_icmp_error(v6: bool, icmp_type: u8) -> bool {
    if v6 {
        (1..=4).contains(&icmp_type)
    } else {
        matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
    }
}

/// The first bytes of the quoted packet's transport header an error must carry (RFC 792).
const QUOTED_TRANSPORT_LEN: usize = 8;

/// Reads the packet quoted by an ICMP error (`l4` starts at the ICMP header). `None` unless the
/// quoted IP header and the first 8 bytes of its transport header are complete.
pub(crate) fn parse_quoted_packet(v6: bool, l4: &[u8]) -> Option<QuotedPacket> {
    let quoted = l4.get(8..)?;
    let (src, dst, protocol, transport) = if v6 {
        let header = Ipv6HeaderSlice::from_slice(quoted).ok()?;
        let transport = quoted.get(header.slice().len()..)?;
        (
            Addr::v6(header.source()),
            Addr::v6(header.destination()),
            header.next_header().0,
            transport,
        )
    } else {
        let header = Ipv4HeaderSlice::from_slice(quoted).ok()?;
        let transport = quoted.get(header.slice().len()..)?;
        (
            Addr::v4(header.source()),
            Addr::v4(header.destination()),
            header.protocol().0,
            transport,
        )
    };
    let transport = transport.get(..QUOTED_TRANSPORT_LEN)?;
    let word = |at: usize| {
        Some(u16::from_be_bytes([
            *transport.get(at)?,
            *transport.get(at + 1)?,
        ]))
    };
    let (src_port, dst_port) = match protocol {
        PROTO_TCP | PROTO_UDP => (word(0)?, word(2)?),
        // An echo request or reply: the flow is keyed by its identifier.
        PROTO_ICMP | PROTO_ICMPV6 => (word(4)?, 0),
        _ => (0, 0),
    };
    Some(QuotedPacket {
        src,
        dst,
        protocol,
        src_port,
        dst_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv6_icmp(icmp_type: u8) -> Vec<u8> {
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        let mut header = [0u8; 40];
        header[0] = 0x60;
        header[5] = 8;
        header[6] = PROTO_ICMPV6;
        frame.extend_from_slice(&header);
        frame.extend_from_slice(&[icmp_type, 0, 0, 0, 0x12, 0x34, 0, 1]);
        frame
    }

    #[test]
    fn echo_identifier_is_read_for_echo_types_of_the_family_only() {
        for (icmp_type, id) in [
            (128, Some(0x1234)),
            (129, Some(0x1234)),
            (8, None),
            (135, None),
        ] {
            let frame = ipv6_icmp(icmp_type);
            let Payload::Ip(ip) = parse_frame(&frame, frame.len()).unwrap().payload else {
                panic!("not IP")
            };
            assert_eq!(ip.echo_id(), id, "type {icmp_type}");
        }
    }

    #[test]
    fn unknown_ipv6_payloads_are_other_protocols() {
        let mut frame = ipv6_icmp(128);
        frame[14 + 6] = 50; // ESP: opaque, no ports
        let Payload::Ip(ip) = parse_frame(&frame, frame.len()).unwrap().payload else {
            panic!("not IP")
        };
        assert_eq!((ip.protocol, ip.transport), (50, Transport::Other));
    }
}
