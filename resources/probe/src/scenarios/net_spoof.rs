//! `net-spoof`: `probe.count` frames of each hostile kind, each aimed at the peer: a UDP
//! datagram from a foreign source MAC, one from a foreign source IP, an ARP reply claiming the
//! peer's IP, a DHCP offer from port 67, an IPv6 router advertisement; then one honest datagram
//! whose payload is `probe-end`. `probe: net-spoof ok sent=N`.

use crate::netstack::{arp, checksum, eth, fail, udp, Session, ETH, ETH_ARP, ETH_IPV4, ETH_IPV6};
use crate::serial::ResultLine;
use crate::zero_page::BootInfo;

pub const NAME: &str = "net-spoof";
const FOREIGN_MAC: [u8; 6] = [0x02, 0xba, 0xd0, 0xba, 0xd0, 0x01];
const FOREIGN_IP: [u8; 4] = [192, 0, 2, 66];

/// An IPv6 router advertisement from the probe's link-local address to all nodes.
pub(super) fn router_advertisement(buf: &mut [u8], mac: [u8; 6]) -> usize {
    let mut src = [0u8; 16];
    src[0] = 0xfe;
    src[1] = 0x80;
    src[8] = mac[0] ^ 2;
    src[9] = mac[1];
    src[10] = mac[2];
    src[11] = 0xff;
    src[12] = 0xfe;
    src[13] = mac[3];
    src[14] = mac[4];
    src[15] = mac[5];
    let mut dst = [0u8; 16];
    dst[0] = 0xff;
    dst[1] = 0x02;
    dst[15] = 1;
    eth(buf, [0x33, 0x33, 0, 0, 0, 1], mac, ETH_IPV6);
    let ra_len = 16;
    let ip = &mut buf[ETH..ETH + 40];
    ip.fill(0);
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(ra_len as u16).to_be_bytes());
    ip[6] = 58;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&src);
    ip[24..40].copy_from_slice(&dst);
    let ra = &mut buf[ETH + 40..ETH + 40 + ra_len];
    ra.fill(0);
    ra[0] = 134;
    ra[4] = 64;
    ra[6..8].copy_from_slice(&1800u16.to_be_bytes());
    let mut sum = 0u32;
    for pair in src.chunks(2).chain(dst.chunks(2)) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    sum += ra_len as u32 + 58;
    let c = checksum(&buf[ETH + 40..ETH + 40 + ra_len], sum);
    buf[ETH + 42..ETH + 44].copy_from_slice(&c.to_be_bytes());
    ETH + 40 + ra_len
}

pub fn run(boot: &BootInfo) {
    let mut s = match Session::open(boot) {
        Ok(s) => s,
        Err(e) => return fail(NAME, e),
    };
    let (mac, peer_mac, ip, peer) = (s.net.mac, s.peer_mac, s.params.ip, s.params.peer);
    let dst = (peer, s.params.peer_port);
    let payload = b"probe-spoof";
    let mut sent = 0u64;
    for _ in 0..s.params.count {
        // Foreign source MAC.
        let buf = s.net.tx_buffer();
        eth(buf, peer_mac, FOREIGN_MAC, ETH_IPV4);
        buf[42..42 + payload.len()].copy_from_slice(payload);
        let len = udp(buf, (ip, 40001), dst, payload.len());
        s.net.send(len);
        // Foreign source IP.
        let buf = s.net.tx_buffer();
        eth(buf, peer_mac, mac, ETH_IPV4);
        buf[42..42 + payload.len()].copy_from_slice(payload);
        let len = udp(buf, (FOREIGN_IP, 40002), dst, payload.len());
        s.net.send(len);
        // ARP reply claiming the peer's address.
        let buf = s.net.tx_buffer();
        eth(buf, peer_mac, mac, ETH_ARP);
        let len = arp(buf, 2, (mac, peer), (peer_mac, peer));
        s.net.send(len);
        // DHCP offer (from port 67).
        let buf = s.net.tx_buffer();
        eth(buf, peer_mac, mac, ETH_IPV4);
        buf[42..42 + payload.len()].copy_from_slice(payload);
        let len = udp(buf, (ip, 67), (peer, 68), payload.len());
        s.net.send(len);
        // IPv6 router advertisement.
        let buf = s.net.tx_buffer();
        let len = router_advertisement(buf, mac);
        s.net.send(len);
        sent += 5;
    }
    s.send_udp_to(dst, 40000, b"probe-end");
    s.net.drain_tx();
    ResultLine::ok(NAME.as_bytes()).dec("sent", sent + 1).end();
}
