//! Link configuration that passes without rules or tracking: DHCP, DHCPv6, neighbour discovery
//! and MLD, but only while it stays on the link. A packet counts as link control only when its
//! addresses and hop limit keep it from being routed (or prove it was not routed); anything
//! else on these ports and types is ordinary traffic, judged by the rules.
//!
//! From the guest (after anti-spoofing):
//! - DHCP 68 -> 67 to 255.255.255.255 or a configured `dhcp_servers` address;
//! - DHCPv6 546 -> 547 to ff02::1:2 or a configured server;
//! - router and neighbour solicitations and advertisements with hop limit 255 to a link-local
//!   unicast or link-scope multicast address (RFC 4861; routers never forward either);
//! - MLD with hop limit 1, from a link-local source (or `::` for reports, RFC 3590), to a
//!   multicast address (routers never forward a link-local source).
//!
//! To the guest:
//! - DHCP 67 -> 68 from a configured server, or from anyone to 255.255.255.255 (a limited
//!   broadcast is never forwarded, so it was sent on the link);
//! - DHCPv6 547 -> 546 from a configured server, or link-local to link-local or link-scope
//!   multicast;
//! - neighbour discovery with hop limit 255 (a routed packet has less); router advertisements
//!   and redirects only from a link-local source (RFC 4861 6.1.2, 8.1);
//! - MLD as from the guest.

use std::net::IpAddr;

use crate::frame::{IpPacket, Transport, PROTO_ICMPV6};
use crate::net_types::{Addr, Direction};

pub(crate) const DHCP_SERVER_PORT: u16 = 67;
pub(crate) const DHCP_CLIENT_PORT: u16 = 68;
pub(crate) const DHCPV6_CLIENT_PORT: u16 = 546;
pub(crate) const DHCPV6_SERVER_PORT: u16 = 547;

pub(crate) const MLD_QUERY: u8 = 130;
pub(crate) const MLD_REPORT: u8 = 131;
pub(crate) const MLD_DONE: u8 = 132;
pub(crate) const ROUTER_SOLICITATION: u8 = 133;
pub(crate) const ROUTER_ADVERTISEMENT: u8 = 134;
pub(crate) const NEIGHBOUR_SOLICITATION: u8 = 135;
pub(crate) const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
pub(crate) const REDIRECT: u8 = 137;
pub(crate) const MLD2_REPORT: u8 = 143;

/// The hop limit of every neighbour-discovery message (RFC 4861).
pub(crate) const ND_HOP_LIMIT: u8 = 255;
/// The hop limit of every MLD message (RFC 2710, RFC 3810).
pub(crate) const MLD_HOP_LIMIT: u8 = 1;

const LIMITED_BROADCAST: u128 = 0xffff_ffff;
/// ff02::1:2, all DHCPv6 relay agents and servers.
const ALL_DHCPV6_SERVERS: u128 = 0xff02_0000_0000_0000_0000_0000_0001_0002;
/// ff02::1:ff00:0/104, the solicited-node multicast prefix.
const SOLICITED_NODE_PREFIX: u128 = 0xff02_0000_0000_0000_0000_0001_ff00_0000;

/// fe80::/10.
pub(crate) fn is_link_local_unicast(addr: Addr) -> bool {
    addr.v6 && addr.bits >> 118 == 0xfe80 >> 6
}

/// ff00::/8.
pub(crate) fn is_multicast_v6(addr: Addr) -> bool {
    addr.v6 && addr.bits >> 120 == 0xff
}

/// A multicast address of interface-local or link-local scope (ffX1::, ffX2::).
fn is_link_scope_multicast(addr: Addr) -> bool {
    is_multicast_v6(addr) && matches!((addr.bits >> 112) & 0xf, 1 | 2)
}

/// The solicited-node multicast group of `target` (RFC 4291 2.7.1).
pub(crate) fn solicited_node(target: Addr) -> Addr {
    Addr {
        bits: SOLICITED_NODE_PREFIX | (target.bits & 0xff_ffff),
        v6: true,
    }
}

/// Whether an MLD type is a listener report (the only MLD message allowed from `::`).
pub(crate) fn is_mld_report(icmp_type: u8) -> bool {
    matches!(icmp_type, MLD_REPORT | MLD2_REPORT)
}

fn is_mld(icmp_type: u8) -> bool {
    matches!(icmp_type, MLD_QUERY..=MLD_DONE | MLD2_REPORT)
}

/// An MLD message that cannot leave the link: hop limit 1, to a multicast group, from a
/// link-local address (or `::` for a report).
pub(crate) fn is_link_mld(ip: &IpPacket<'_>, icmp_type: u8) -> bool {
    let source_on_link =
        is_link_local_unicast(ip.src) || (ip.src.bits == 0 && is_mld_report(icmp_type));
    ip.hop_limit == MLD_HOP_LIMIT && is_multicast_v6(ip.dst) && source_on_link
}

/// The DHCP servers of the configuration, as addresses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DhcpServers<'a>(pub &'a [IpAddr]);

impl DhcpServers<'_> {
    fn contains(&self, addr: Addr) -> bool {
        self.0.iter().any(|server| Addr::from(*server) == addr)
    }
}

/// Whether a packet is link configuration that stays on the link (see the module doc).
pub(crate) fn is_link_control(
    direction: Direction,
    ip: &IpPacket<'_>,
    servers: DhcpServers<'_>,
) -> bool {
    match ip.transport {
        Transport::Udp { src_port, dst_port } => {
            is_link_dhcp(direction, ip, (src_port, dst_port), servers)
        }
        Transport::Icmp { icmp_type, .. } if ip.protocol == PROTO_ICMPV6 => {
            is_link_icmpv6(direction, ip, icmp_type)
        }
        _ => false,
    }
}

fn is_link_dhcp(
    direction: Direction,
    ip: &IpPacket<'_>,
    ports: (u16, u16),
    servers: DhcpServers<'_>,
) -> bool {
    match (direction, ip.src.v6) {
        (Direction::Egress, false) => {
            ports == (DHCP_CLIENT_PORT, DHCP_SERVER_PORT)
                && (ip.dst.bits == LIMITED_BROADCAST || servers.contains(ip.dst))
        }
        (Direction::Egress, true) => {
            ports == (DHCPV6_CLIENT_PORT, DHCPV6_SERVER_PORT)
                && (ip.dst.bits == ALL_DHCPV6_SERVERS || servers.contains(ip.dst))
        }
        (Direction::Ingress, false) => {
            ports == (DHCP_SERVER_PORT, DHCP_CLIENT_PORT)
                && (ip.dst.bits == LIMITED_BROADCAST || servers.contains(ip.src))
        }
        (Direction::Ingress, true) => {
            let on_link = is_link_local_unicast(ip.src)
                && (is_link_local_unicast(ip.dst) || is_link_scope_multicast(ip.dst));
            ports == (DHCPV6_SERVER_PORT, DHCPV6_CLIENT_PORT)
                && (on_link || servers.contains(ip.src))
        }
    }
}

fn is_link_icmpv6(direction: Direction, ip: &IpPacket<'_>, icmp_type: u8) -> bool {
    if is_mld(icmp_type) {
        return is_link_mld(ip, icmp_type);
    }
    let nd_on_link = ip.hop_limit == ND_HOP_LIMIT;
    match (direction, icmp_type) {
        (
            Direction::Egress,
            ROUTER_SOLICITATION | NEIGHBOUR_SOLICITATION | NEIGHBOUR_ADVERTISEMENT,
        ) => nd_on_link && (is_link_local_unicast(ip.dst) || is_link_scope_multicast(ip.dst)),
        (
            Direction::Ingress,
            ROUTER_SOLICITATION | NEIGHBOUR_SOLICITATION | NEIGHBOUR_ADVERTISEMENT,
        ) => nd_on_link,
        (Direction::Ingress, ROUTER_ADVERTISEMENT | REDIRECT) => {
            nd_on_link && is_link_local_unicast(ip.src)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(text: &str) -> Addr {
        Addr::from(text.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn address_scopes_are_recognised() {
        assert!(is_link_local_unicast(v6("fe80::1")));
        assert!(is_link_local_unicast(v6("febf::1")));
        assert!(!is_link_local_unicast(v6("fec0::1")));
        assert!(is_link_scope_multicast(v6("ff02::1:2")));
        assert!(is_link_scope_multicast(v6("ff12::1")));
        assert!(!is_link_scope_multicast(v6("ff0e::1")));
        assert!(is_multicast_v6(v6("ff0e::1")));
        assert_eq!(solicited_node(v6("fd00::12:3456")), v6("ff02::1:ff12:3456"));
    }
}
