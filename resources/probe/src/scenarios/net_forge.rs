//! `net-forge`: one forged frame per case, each a way for a guest to pose as someone else on
//! the link or to reach past it: a foreign source MAC, a foreign IPv4 source, an ARP reply
//! claiming the peer's address, a foreign IPv6 source, a DHCP OFFER from port 67 and a DHCP
//! ACK from another port to the client port 68, a router advertisement, a DHCP DISCOVER to a
//! unicast internet address, a neighbour solicitation to a global address with hop limit 64,
//! a duplicate-address probe from `::` for an address the guest does not own; last an honest
//! datagram. UDP payloads (or the BOOTP `sname` field) carry `forge-CASE` so the host,
//! capturing on the tap, can tell the cases apart.
//!
//! After each case the probe prints `probe: net-forge case NAME sent` (the device has taken
//! the frame) and waits up to 10 s for a UDP datagram from the peer to `probe.port`: the host
//! reads the metrics in between, so each case's counters are its own.
//! `probe: net-forge ok sent=N`.

use crate::netstack::{arp, checksum, eth, ethertype, fail, udp, Session, BROADCAST, ETH, ETH_ARP, ETH_IPV4, ETH_IPV6, IP, UDP};
use crate::serial::{put_str, ResultLine};
use crate::virtio::tsc;
use crate::zero_page::BootInfo;

use super::net_spoof::router_advertisement;

pub const NAME: &str = "net-forge";
const FOREIGN_MAC: [u8; 6] = [0x02, 0xba, 0xd0, 0xba, 0xd0, 0x01];
const FOREIGN_IP: [u8; 4] = [192, 0, 2, 66];
/// A unicast internet address (TEST-NET-2).
const INTERNET: [u8; 4] = [198, 51, 100, 7];
const GUEST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const PEER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const FOREIGN6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x66];
const PROTO_ICMPV6: u8 = 58;
const BOOTP: usize = 244;

/// The cases in order; case n's UDP datagrams go to port 7200 + n.
const CASES: &[&str] = &[
    "mac", "ipv4-src", "arp-sender", "ipv6-src", "dhcp-offer-67", "dhcp-ack-other-port",
    "router-advert", "dhcp-to-internet", "ns-global-hop64", "dad-foreign", "honest",
];

struct Ctx {
    mac: [u8; 6],
    peer_mac: [u8; 6],
    ip: [u8; 4],
    peer: [u8; 4],
}

/// `forge-NAME` at `at`.
fn marker(buf: &mut [u8], at: usize, name: &str) -> usize {
    buf[at..at + 6].copy_from_slice(b"forge-");
    buf[at + 6..at + 6 + name.len()].copy_from_slice(name.as_bytes());
    6 + name.len()
}

/// A BOOTP message of DHCP type `kind` (1 DISCOVER, 2 OFFER, 5 ACK) as UDP payload, the
/// marker in `sname`; returns its length.
fn bootp(buf: &mut [u8], c: &Ctx, kind: u8, name: &str) -> usize {
    let b = &mut buf[ETH + IP + UDP..ETH + IP + UDP + BOOTP];
    b.fill(0);
    b[0] = if kind == 1 { 1 } else { 2 };
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&0x5eed_f00du32.to_be_bytes());
    if kind != 1 {
        b[16..20].copy_from_slice(&[10, 0, 0, 99]); // yiaddr: the "lease"
        b[20..24].copy_from_slice(&c.ip); // siaddr: the guest as server
    }
    b[28..34].copy_from_slice(&c.mac);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    b[240..243].copy_from_slice(&[53, 1, kind]);
    b[243] = 255;
    marker(buf, ETH + IP + UDP + 44, name);
    BOOTP
}

/// An IPv6 header at `buf[ETH..]`; returns the frame length.
fn ipv6(buf: &mut [u8], src: [u8; 16], dst: [u8; 16], next: u8, hop: u8, payload: usize) -> usize {
    let h = &mut buf[ETH..ETH + 40];
    h.fill(0);
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
    h[6] = next;
    h[7] = hop;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    ETH + 40 + payload
}

/// The upper-layer checksum of the IPv6 packet at `buf[ETH..]`, written at `at` (offset in
/// the payload).
fn csum6(buf: &mut [u8], at: usize) {
    let len = usize::from(u16::from_be_bytes([buf[ETH + 4], buf[ETH + 5]]));
    let mut sum = u32::from(buf[ETH + 6]) + len as u32;
    for pair in buf[ETH + 8..ETH + 40].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    let p = ETH + 40;
    buf[p + at..p + at + 2].fill(0);
    let c = checksum(&buf[p..p + len], sum);
    buf[p + at..p + at + 2].copy_from_slice(&c.to_be_bytes());
}

/// A neighbour solicitation for `target` (with the guest's source link-address option unless
/// `src` is `::`); returns the frame length.
fn solicitation(buf: &mut [u8], c: &Ctx, dst: ([u8; 6], [u8; 16]), src: [u8; 16], hop: u8, target: [u8; 16]) -> usize {
    eth(buf, dst.0, c.mac, ETH_IPV6);
    let len = if src == [0; 16] { 24 } else { 32 };
    let frame = ipv6(buf, src, dst.1, PROTO_ICMPV6, hop, len);
    let m = &mut buf[ETH + 40..ETH + 40 + len];
    m.fill(0);
    m[0] = 135;
    m[8..24].copy_from_slice(&target);
    if len == 32 {
        m[24] = 1;
        m[25] = 1;
        m[26..32].copy_from_slice(&c.mac);
    }
    csum6(buf, 2);
    frame
}

/// Builds case `n` in a TX buffer and sends it.
fn send_case(s: &mut Session, c: &Ctx, n: u16, name: &str) {
    let port = 7200 + n;
    let buf = s.net.tx_buffer();
    let p = ETH + IP + UDP;
    let len = match name {
        "mac" => {
            eth(buf, c.peer_mac, FOREIGN_MAC, ETH_IPV4);
            let m = marker(buf, p, name);
            udp(buf, (c.ip, 40000), (c.peer, port), m)
        }
        "ipv4-src" => {
            eth(buf, c.peer_mac, c.mac, ETH_IPV4);
            let m = marker(buf, p, name);
            udp(buf, (FOREIGN_IP, 40000), (c.peer, port), m)
        }
        "arp-sender" => {
            eth(buf, c.peer_mac, c.mac, ETH_ARP);
            arp(buf, 2, (c.mac, c.peer), (c.peer_mac, c.peer))
        }
        "ipv6-src" => {
            eth(buf, c.peer_mac, c.mac, ETH_IPV6);
            let m = marker(buf, ETH + 40 + UDP, name);
            let frame = ipv6(buf, FOREIGN6, PEER6, 17, 64, UDP + m);
            let u = &mut buf[ETH + 40..ETH + 40 + UDP];
            u[0..2].copy_from_slice(&40000u16.to_be_bytes());
            u[2..4].copy_from_slice(&port.to_be_bytes());
            u[4..6].copy_from_slice(&((UDP + m) as u16).to_be_bytes());
            csum6(buf, 6);
            frame
        }
        "dhcp-offer-67" => {
            eth(buf, BROADCAST, c.mac, ETH_IPV4);
            let b = bootp(buf, c, 2, name);
            udp(buf, (c.ip, 67), ([255; 4], 68), b)
        }
        "dhcp-ack-other-port" => {
            eth(buf, BROADCAST, c.mac, ETH_IPV4);
            let b = bootp(buf, c, 5, name);
            udp(buf, (c.ip, 40067), ([255; 4], 68), b)
        }
        "router-advert" => router_advertisement(buf, c.mac),
        "dhcp-to-internet" => {
            eth(buf, c.peer_mac, c.mac, ETH_IPV4);
            let b = bootp(buf, c, 1, name);
            udp(buf, (c.ip, 68), (INTERNET, 67), b)
        }
        "ns-global-hop64" => solicitation(buf, c, (c.peer_mac, PEER6), GUEST6, 64, PEER6),
        "dad-foreign" => {
            // The solicited-node group of fd00::1 (not the guest's).
            let mut group = [0u8; 16];
            group[0] = 0xff;
            group[1] = 0x02;
            group[11] = 1;
            group[12] = 0xff;
            group[15] = 1;
            solicitation(buf, c, ([0x33, 0x33, 0xff, 0, 0, 1], group), [0; 16], 255, PEER6)
        }
        _ => {
            eth(buf, c.peer_mac, c.mac, ETH_IPV4);
            let m = marker(buf, p, name);
            udp(buf, (c.ip, 40000), (c.peer, port), m)
        }
    };
    s.net.send(len);
    s.net.drain_tx();
}

/// Waits up to 10 s for a UDP datagram from the peer to `port`, answering ARP meanwhile.
fn wait_for_go(s: &mut Session, port: u16) -> bool {
    let start = tsc();
    while !s.params.secs_passed(start, 10) {
        let Some(frame) = s.net.recv() else { continue };
        if s.answer_arp(frame) || ethertype(frame) != ETH_IPV4 || frame.len() < ETH + IP + UDP {
            continue;
        }
        let h = &frame[ETH..];
        if h[0] == 0x45 && h[9] == 17 && h[12..16] == s.params.peer && u16::from_be_bytes([h[22], h[23]]) == port {
            return true;
        }
    }
    false
}

pub fn run(boot: &BootInfo) {
    let mut s = match Session::open(boot) {
        Ok(s) => s,
        Err(e) => return fail(NAME, e),
    };
    let c = Ctx { mac: s.net.mac, peer_mac: s.peer_mac, ip: s.params.ip, peer: s.params.peer };
    let go_port = s.params.port;
    put_str("probe: net-forge ready\n");
    if !wait_for_go(&mut s, go_port) {
        return fail(NAME, "no-go-from-host");
    }
    for (n, name) in CASES.iter().enumerate() {
        send_case(&mut s, &c, n as u16, name);
        put_str("probe: net-forge case ");
        put_str(name);
        put_str(" sent\n");
        if !wait_for_go(&mut s, go_port) {
            return fail(NAME, "no-go-from-host");
        }
    }
    ResultLine::ok(NAME.as_bytes()).dec("sent", CASES.len() as u64).end();
}
