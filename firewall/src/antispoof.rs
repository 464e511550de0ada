//! Anti-spoofing of guest frames (whenever the interface has a `guest_mac`): the source MAC,
//! IP source addresses inside `allowed_ips` (plus the EUI-64 link-local address), ARP and
//! neighbour-discovery claims, and no DHCP server or router role for the guest. The unspecified
//! source address only where an RFC requires it: a DHCP client without a lease broadcasting,
//! duplicate address detection for an address the guest may take, MLD reports (RFC 3590).

use crate::counters::DropReason;
use crate::frame::{ArpView, IpPacket, Transport, PROTO_ICMPV6};
use crate::link_control::{
    is_link_mld, is_mld_report, solicited_node, DHCPV6_CLIENT_PORT, DHCPV6_SERVER_PORT,
    DHCP_CLIENT_PORT, DHCP_SERVER_PORT, ND_HOP_LIMIT, NEIGHBOUR_ADVERTISEMENT,
    NEIGHBOUR_SOLICITATION, REDIRECT, ROUTER_ADVERTISEMENT, ROUTER_SOLICITATION,
};
use crate::net_types::{Addr, Cidr, MacAddr};

const ARP_REQUEST: u16 = 1;
const IPV4_LIMITED_BROADCAST: u128 = 0xffff_ffff;

const ND_OPTION_SOURCE_LINK_ADDR: u8 = 1;
const ND_OPTION_TARGET_LINK_ADDR: u8 = 2;

/// The guest's identity: its MAC, the prefixes it may send from and its link-local address.
#[derive(Clone, Debug)]
pub(crate) struct AntiSpoof {
    guest_mac: MacAddr,
    allowed_ips: Vec<Cidr>,
    link_local: Addr,
}

impl AntiSpoof {
    pub fn new(guest_mac: MacAddr, allowed_ips: &[Cidr]) -> AntiSpoof {
        AntiSpoof {
            guest_mac,
            allowed_ips: allowed_ips.to_vec(),
            link_local: eui64_link_local(guest_mac),
        }
    }

    /// Whether the guest may use `addr` as its own.
    pub fn owns(&self, addr: Addr) -> bool {
        addr == self.link_local || self.allowed_ips.iter().any(|cidr| cidr.contains(addr))
    }

    pub fn check_source_mac(&self, mac: MacAddr) -> Result<(), DropReason> {
        if mac == self.guest_mac {
            Ok(())
        } else {
            Err(DropReason::SpoofMac)
        }
    }

    /// ARP from the guest: sender MAC is the guest's; sender IP is owned, or 0.0.0.0 in a
    /// request (an RFC 5227 probe).
    pub fn check_arp(&self, arp: &ArpView) -> Result<(), DropReason> {
        let probe = arp.sender_ip == [0; 4] && arp.operation == ARP_REQUEST;
        if arp.sender_mac != self.guest_mac || !(probe || self.owns(Addr::v4(arp.sender_ip))) {
            return Err(DropReason::SpoofArp);
        }
        Ok(())
    }

    /// An IP packet from the guest.
    pub fn check_ip(&self, ip: &IpPacket<'_>) -> Result<(), DropReason> {
        if acts_as_server_or_router(ip) {
            return Err(DropReason::RogueDhcpRa);
        }
        let icmpv6_type = match ip.transport {
            Transport::Icmp { icmp_type, .. } if ip.protocol == PROTO_ICMPV6 => Some(icmp_type),
            _ => None,
        };
        if ip.src.bits == 0 {
            self.check_unspecified_source(ip, icmpv6_type)?;
        } else if !self.owns(ip.src) {
            return Err(DropReason::SpoofIp);
        }
        match icmpv6_type {
            Some(ROUTER_SOLICITATION) => self.check_nd_options(ip.l4, 8),
            Some(NEIGHBOUR_SOLICITATION) => self.check_nd_options(ip.l4, 24),
            Some(NEIGHBOUR_ADVERTISEMENT) => {
                if !self.owns(nd_target(ip.l4)?) {
                    return Err(DropReason::SpoofArp);
                }
                self.check_nd_options(ip.l4, 24)
            }
            _ => Ok(()),
        }
    }

    /// The unspecified source (0.0.0.0 or ::) is allowed only for the packets that need it:
    /// a DHCP client without a lease (68 -> 67, to the limited broadcast), duplicate address
    /// detection (a neighbour solicitation with hop limit 255 to the solicited-node group of
    /// its target, which the guest must own) and MLD reports on the link (RFC 3590).
    fn check_unspecified_source(
        &self,
        ip: &IpPacket<'_>,
        icmpv6_type: Option<u8>,
    ) -> Result<(), DropReason> {
        if !ip.src.v6 {
            let discover = ip.transport
                == Transport::Udp {
                    src_port: DHCP_CLIENT_PORT,
                    dst_port: DHCP_SERVER_PORT,
                }
                && ip.dst.bits == IPV4_LIMITED_BROADCAST;
            return if discover {
                Ok(())
            } else {
                Err(DropReason::SpoofIp)
            };
        }
        match icmpv6_type {
            Some(NEIGHBOUR_SOLICITATION) => {
                let target = nd_target(ip.l4)?;
                if ip.hop_limit != ND_HOP_LIMIT || ip.dst != solicited_node(target) {
                    return Err(DropReason::SpoofIp);
                }
                if !self.owns(target) {
                    return Err(DropReason::SpoofArp);
                }
                Ok(())
            }
            Some(icmp_type) if is_mld_report(icmp_type) && is_link_mld(ip, icmp_type) => Ok(()),
            _ => Err(DropReason::SpoofIp),
        }
    }

    /// Link-layer address options of a neighbour-discovery message must carry `guest_mac`.
    fn check_nd_options(&self, message: &[u8], options_start: usize) -> Result<(), DropReason> {
        let mut options = message.get(options_start..).ok_or(DropReason::Malformed)?;
        while !options.is_empty() {
            let &[kind, len_units, ..] = options else {
                return Err(DropReason::Malformed);
            };
            let len = usize::from(len_units) * 8;
            if len == 0 || len > options.len() {
                return Err(DropReason::Malformed);
            }
            let is_link_addr =
                kind == ND_OPTION_SOURCE_LINK_ADDR || kind == ND_OPTION_TARGET_LINK_ADDR;
            if is_link_addr && options[2..8] != self.guest_mac {
                return Err(DropReason::SpoofArp);
            }
            options = &options[len..];
        }
        Ok(())
    }
}

/// The IPv6 link-local address SLAAC derives from a MAC (fe80::/64 + modified EUI-64).
pub(crate) fn eui64_link_local(mac: MacAddr) -> Addr {
    let mut bytes = [0u8; 16];
    bytes[0] = 0xfe;
    bytes[1] = 0x80;
    bytes[8] = mac[0] ^ 0x02;
    bytes[9] = mac[1];
    bytes[10] = mac[2];
    bytes[11] = 0xff;
    bytes[12] = 0xfe;
    bytes[13] = mac[3];
    bytes[14] = mac[4];
    bytes[15] = mac[5];
    Addr::v6(bytes)
}

/// The target address of a neighbour solicitation or advertisement.
fn nd_target(message: &[u8]) -> Result<Addr, DropReason> {
    let target: [u8; 16] = message
        .get(8..24)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(DropReason::Malformed)?;
    Ok(Addr::v6(target))
}

/// The guest answering as a DHCP(v6) server or relay (from the server port, or to the client
/// port, whatever the other port), or sending router advertisements or redirects.
fn acts_as_server_or_router(ip: &IpPacket<'_>) -> bool {
    match ip.transport {
        Transport::Udp { src_port, dst_port } => {
            let (client, server) = if ip.src.v6 {
                (DHCPV6_CLIENT_PORT, DHCPV6_SERVER_PORT)
            } else {
                (DHCP_CLIENT_PORT, DHCP_SERVER_PORT)
            };
            src_port == server || dst_port == client
        }
        Transport::Icmp { icmp_type, .. } => {
            ip.protocol == PROTO_ICMPV6 && matches!(icmp_type, ROUTER_ADVERTISEMENT | REDIRECT)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eui64_link_local_flips_the_universal_bit() {
        let addr = eui64_link_local([0x06, 0x00, 0xac, 0x10, 0x00, 0x02]);
        assert_eq!(addr.to_ip().to_string(), "fe80::400:acff:fe10:2");
    }

    #[test]
    fn arp_probe_from_unspecified_address_passes() {
        let guard = AntiSpoof::new([2, 0, 0, 0, 0, 1], &["10.0.0.2/32".parse().unwrap()]);
        let probe = ArpView {
            operation: ARP_REQUEST,
            sender_mac: [2, 0, 0, 0, 0, 1],
            sender_ip: [0; 4],
        };
        assert_eq!(guard.check_arp(&probe), Ok(()));
        let reply = ArpView {
            operation: 2,
            ..probe
        };
        assert_eq!(guard.check_arp(&reply), Err(DropReason::SpoofArp));
        let owned = ArpView {
            operation: 2,
            sender_ip: [10, 0, 0, 2],
            ..probe
        };
        assert_eq!(guard.check_arp(&owned), Ok(()));
        let other_mac = ArpView {
            sender_mac: [2, 0, 0, 0, 0, 9],
            ..owned
        };
        assert_eq!(guard.check_arp(&other_mac), Err(DropReason::SpoofArp));
    }

    #[test]
    fn nd_options_are_walked_with_bounds() {
        let guard = AntiSpoof::new([2, 0, 0, 0, 0, 1], &[]);
        let mut message = vec![0u8; 8];
        message.extend_from_slice(&[ND_OPTION_SOURCE_LINK_ADDR, 1, 2, 0, 0, 0, 0, 1]);
        assert_eq!(guard.check_nd_options(&message, 8), Ok(()));
        message[15] = 9;
        assert_eq!(
            guard.check_nd_options(&message, 8),
            Err(DropReason::SpoofArp)
        );
        message[9] = 0;
        assert_eq!(
            guard.check_nd_options(&message, 8),
            Err(DropReason::Malformed)
        );
        message[9] = 2;
        assert_eq!(
            guard.check_nd_options(&message, 8),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            guard.check_nd_options(&message[..4], 8),
            Err(DropReason::Malformed)
        );
    }
}
