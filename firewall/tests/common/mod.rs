//! Frames and firewalls for the integration tests: a guest 172.16.0.2 / fd00::2 with MAC
//! 06:00:ac:10:00:02 behind a host 172.16.0.1, and remote hosts on the internet.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use palisade_firewall::{Firewall, FirewallConfig, MacAddr};

pub const GUEST_MAC: MacAddr = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
pub const HOST_MAC: MacAddr = [0x06, 0x00, 0xac, 0x10, 0x00, 0x01];
pub const OTHER_MAC: MacAddr = [0x06, 0x00, 0xac, 0x10, 0x00, 0x99];
pub const GUEST_IP: [u8; 4] = [172, 16, 0, 2];
pub const HOST_IP: [u8; 4] = [172, 16, 0, 1];
pub const REMOTE_IP: [u8; 4] = [203, 0, 113, 9];
pub const GUEST_IP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const REMOTE_IP6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
/// fe80::400:acff:fe10:2, derived from GUEST_MAC.
pub const GUEST_LINK_LOCAL: [u8; 16] = [
    0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x04, 0x00, 0xac, 0xff, 0xfe, 0x10, 0x00, 0x02,
];

pub const SYN: u8 = 0x02;
pub const SYN_ACK: u8 = 0x12;
pub const ACK: u8 = 0x10;
pub const FIN_ACK: u8 = 0x11;
pub const RST: u8 = 0x04;

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;

/// The firewall of the guest, from a `firewall` JSON object.
pub fn firewall(config_json: &str, epoch: Instant) -> Firewall {
    let config: FirewallConfig = serde_json::from_str(config_json).expect("valid config");
    Firewall::new("eth0", &config, Some(GUEST_MAC), epoch).expect("firewall")
}

pub fn config(config_json: &str) -> FirewallConfig {
    serde_json::from_str(config_json).expect("valid config")
}

pub fn secs(epoch: Instant, secs: u64) -> Instant {
    epoch + Duration::from_secs(secs)
}

fn write(builder: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = Vec::new();
    builder(&mut frame);
    frame
}

/// A TCP segment with the given flags and payload size.
pub fn tcp_v4(
    macs: (MacAddr, MacAddr),
    ips: ([u8; 4], [u8; 4]),
    ports: (u16, u16),
    flags: u8,
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(ips.0, ips.1, 64)
        .tcp(ports.0, ports.1, 1, 65_535);
    let mut frame = write(|out| builder.write(out, &[]).expect("frame"));
    frame[ETH_LEN + IPV4_LEN + 13] = flags;
    frame
}

pub fn udp_v4(macs: (MacAddr, MacAddr), ips: ([u8; 4], [u8; 4]), ports: (u16, u16)) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(ips.0, ips.1, 64)
        .udp(ports.0, ports.1);
    write(|out| builder.write(out, b"payload").expect("frame"))
}

pub fn icmp_v4(
    macs: (MacAddr, MacAddr),
    ips: ([u8; 4], [u8; 4]),
    kind: (u8, u8),
    rest: [u8; 4],
    payload: &[u8],
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(ips.0, ips.1, 64)
        .icmpv4_raw(kind.0, kind.1, rest);
    write(|out| builder.write(out, payload).expect("frame"))
}

pub fn tcp_v6(
    macs: (MacAddr, MacAddr),
    ips: ([u8; 16], [u8; 16]),
    ports: (u16, u16),
    flags: u8,
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(ips.0, ips.1, 64)
        .tcp(ports.0, ports.1, 1, 65_535);
    let mut frame = write(|out| builder.write(out, &[]).expect("frame"));
    frame[ETH_LEN + 40 + 13] = flags;
    frame
}

pub fn udp_v6(macs: (MacAddr, MacAddr), ips: ([u8; 16], [u8; 16]), ports: (u16, u16)) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(ips.0, ips.1, 64)
        .udp(ports.0, ports.1);
    write(|out| builder.write(out, b"payload").expect("frame"))
}

/// An ICMPv6 message: type, code, bytes 4..8 and the body after them.
pub fn icmp_v6(
    macs: (MacAddr, MacAddr),
    ips: ([u8; 16], [u8; 16]),
    kind: (u8, u8),
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(ips.0, ips.1, 255)
        .icmpv6_raw(kind.0, kind.1, rest);
    write(|out| builder.write(out, body).expect("frame"))
}

/// Ethernet/IPv4 ARP.
pub fn arp(
    src_mac: MacAddr,
    operation: u16,
    sender: (MacAddr, [u8; 4]),
    target_ip: [u8; 4],
) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
    frame.extend_from_slice(&operation.to_be_bytes());
    frame.extend_from_slice(&sender.0);
    frame.extend_from_slice(&sender.1);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target_ip);
    frame
}

/// A TCP segment from the guest to `dst`.
pub fn guest_tcp(dst: [u8; 4], ports: (u16, u16), flags: u8) -> Vec<u8> {
    tcp_v4((GUEST_MAC, HOST_MAC), (GUEST_IP, dst), ports, flags)
}

/// A TCP segment from `src` to the guest.
pub fn to_guest_tcp(src: [u8; 4], ports: (u16, u16), flags: u8) -> Vec<u8> {
    tcp_v4((HOST_MAC, GUEST_MAC), (src, GUEST_IP), ports, flags)
}

pub fn guest_udp(dst: [u8; 4], ports: (u16, u16)) -> Vec<u8> {
    udp_v4((GUEST_MAC, HOST_MAC), (GUEST_IP, dst), ports)
}

pub fn to_guest_udp(src: [u8; 4], ports: (u16, u16)) -> Vec<u8> {
    udp_v4((HOST_MAC, GUEST_MAC), (src, GUEST_IP), ports)
}

/// Sets the IPv4 fragment offset (in 8-byte units) and the more-fragments flag.
pub fn set_ipv4_fragment(frame: &mut [u8], offset_units: u16, more: bool) {
    let value = offset_units | if more { 0x2000 } else { 0 };
    frame[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&value.to_be_bytes());
}

/// Sets the IPv4 total length (the firewall does not check the header checksum).
pub fn set_ipv4_total_len(frame: &mut [u8], total_len: u16) {
    frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total_len.to_be_bytes());
}

/// Sets the IPv6 payload length.
pub fn set_ipv6_payload_len(frame: &mut [u8], payload_len: u16) {
    frame[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&payload_len.to_be_bytes());
}

/// Sets the IPv4 TTL or the IPv6 hop limit.
pub fn set_hop_limit(frame: &mut [u8], hops: u8) {
    if frame[12..14] == [0x86, 0xdd] {
        frame[ETH_LEN + 7] = hops;
    } else {
        frame[ETH_LEN + 8] = hops;
    }
}

/// fe80::1, the host's link-local address.
pub const HOST_LINK_LOCAL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// ff02::1, all nodes on the link.
pub const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// ff02::16, all MLDv2-capable routers.
pub const MLD2_ROUTERS: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
/// ff02::1:2, all DHCPv6 relay agents and servers.
pub const DHCPV6_SERVERS: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2];

/// The solicited-node multicast address of `target` (ff02::1:ffXX:XXXX).
pub fn solicited_node(target: [u8; 16]) -> [u8; 16] {
    let mut group = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
    group[13..].copy_from_slice(&target[13..]);
    group
}
