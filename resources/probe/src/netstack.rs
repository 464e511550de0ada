//! Just enough of Ethernet, ARP, IPv4/6, UDP, TCP and ICMP for the network scenarios: frame
//! builders with real checksums, a parser for what the probe answers, and the scenarios'
//! command line (`probe.ip=A.B.C.D/N`, `probe.peer=IP:PORT`, `probe.count=`, `probe.size=`,
//! `probe.secs=`, `probe.port=`, `probe.tsc_mhz=` for converting TSC ticks to time).

use crate::cmdline;
use crate::serial::ResultLine;
use crate::virtio::net::Net;
use crate::virtio::{self, tsc, DEVICE_ID_NET};
use crate::zero_page::BootInfo;

pub const ETH: usize = 14;
pub const IP: usize = 20;
pub const UDP: usize = 8;
pub const BROADCAST: [u8; 6] = [0xff; 6];
pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_IPV6: u16 = 0x86dd;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// Largest UDP payload in one 1514-byte frame.
pub const MAX_PAYLOAD: usize = 1500 - IP - UDP;

pub fn parse_dec(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 12 {
        return None;
    }
    text.iter().try_fold(0u64, |acc, &c| Some(acc * 10 + u64::from((c as char).to_digit(10)?)))
}

pub fn parse_ipv4(text: &[u8]) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut parts = text.split(|&c| c == b'.');
    for byte in ip.iter_mut() {
        *byte = u8::try_from(parse_dec(parts.next()?)?).ok()?;
    }
    parts.next().is_none().then_some(ip)
}

/// What the scenarios read from the command line.
pub struct Params {
    pub ip: [u8; 4],
    pub peer: [u8; 4],
    pub peer_port: u16,
    pub count: u64,
    pub size: usize,
    pub secs: u64,
    pub port: u16,
    pub tsc_per_us: u64,
}

impl Params {
    pub fn parse(boot: &BootInfo) -> Option<Self> {
        let line = boot.cmdline();
        let num = |key: &[u8], default: u64| cmdline::param(line, key).and_then(parse_dec).unwrap_or(default);
        let ip_text = cmdline::param(line, b"probe.ip")?;
        let ip_text = ip_text.split(|&c| c == b'/').next()?;
        let peer_text = cmdline::param(line, b"probe.peer")?;
        let colon = peer_text.iter().position(|&c| c == b':')?;
        Some(Self {
            ip: parse_ipv4(ip_text)?,
            peer: parse_ipv4(&peer_text[..colon])?,
            peer_port: u16::try_from(parse_dec(&peer_text[colon + 1..])?).ok()?,
            count: num(b"probe.count", 10),
            size: (num(b"probe.size", 64) as usize).min(MAX_PAYLOAD),
            secs: num(b"probe.secs", 10),
            port: num(b"probe.port", 5000) as u16,
            tsc_per_us: num(b"probe.tsc_mhz", 2000).max(1),
        })
    }

    pub fn usecs_since(&self, start: u64) -> u64 {
        tsc().wrapping_sub(start) / self.tsc_per_us
    }

    pub fn secs_passed(&self, start: u64, secs: u64) -> bool {
        tsc().wrapping_sub(start) > secs * 1_000_000 * self.tsc_per_us
    }
}

/// The Internet checksum of `data`, continuing from `sum`.
pub fn checksum(data: &[u8], mut sum: u32) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_sum(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
    let w = |b: [u8; 4]| u32::from(u16::from_be_bytes([b[0], b[1]])) + u32::from(u16::from_be_bytes([b[2], b[3]]));
    w(src) + w(dst) + u32::from(proto) + len as u32
}

pub fn eth(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    buf[..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// An IPv4 header at `buf[ETH..]` for `payload` bytes; returns the frame length.
pub fn ipv4(buf: &mut [u8], src: [u8; 4], dst: [u8; 4], proto: u8, payload: usize) -> usize {
    let h = &mut buf[ETH..ETH + IP];
    h.fill(0);
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((IP + payload) as u16).to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let sum = checksum(h, 0);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    ETH + IP + payload
}

/// A UDP header after the IPv4 one, its payload already in place; returns the frame length.
pub fn udp(buf: &mut [u8], src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: usize) -> usize {
    let len = UDP + payload;
    let u = &mut buf[ETH + IP..ETH + IP + len];
    u[0..2].copy_from_slice(&src.1.to_be_bytes());
    u[2..4].copy_from_slice(&dst.1.to_be_bytes());
    u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    u[6..8].fill(0);
    let sum = checksum(u, pseudo_sum(src.0, dst.0, PROTO_UDP, len));
    u[6..8].copy_from_slice(&(if sum == 0 { 0xffff } else { sum }).to_be_bytes());
    ipv4(buf, src.0, dst.0, PROTO_UDP, len)
}

/// A TCP SYN after the IPv4 header; returns the frame length.
pub fn tcp_syn(buf: &mut [u8], src: ([u8; 4], u16), dst: ([u8; 4], u16), seq: u32) -> usize {
    let t = &mut buf[ETH + IP..ETH + IP + 20];
    t.fill(0);
    t[0..2].copy_from_slice(&src.1.to_be_bytes());
    t[2..4].copy_from_slice(&dst.1.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let sum = checksum(t, pseudo_sum(src.0, dst.0, PROTO_TCP, 20));
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    ipv4(buf, src.0, dst.0, PROTO_TCP, 20)
}

/// An ARP packet (1 request, 2 reply) after the Ethernet header; returns the frame length.
pub fn arp(buf: &mut [u8], op: u16, sender: ([u8; 6], [u8; 4]), target: ([u8; 6], [u8; 4])) -> usize {
    let a = &mut buf[ETH..ETH + 28];
    a[0..2].copy_from_slice(&1u16.to_be_bytes());
    a[2..4].copy_from_slice(&ETH_IPV4.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&op.to_be_bytes());
    a[8..14].copy_from_slice(&sender.0);
    a[14..18].copy_from_slice(&sender.1);
    a[18..24].copy_from_slice(&target.0);
    a[24..28].copy_from_slice(&target.1);
    ETH + 28
}

pub fn ethertype(frame: &[u8]) -> u16 {
    if frame.len() < ETH {
        return 0;
    }
    u16::from_be_bytes([frame[12], frame[13]])
}

/// A network scenario's state: the device, its addresses and the peer's MAC.
pub struct Session {
    pub net: Net,
    pub params: Params,
    pub peer_mac: [u8; 6],
}

impl Session {
    /// Opens the first virtio-net device and resolves the peer (`Err` is the fail detail).
    pub fn open(boot: &BootInfo) -> Result<Self, &'static str> {
        let params = Params::parse(boot).ok_or("bad-or-missing-probe.ip-or-probe.peer")?;
        if !virtio::dma::available(boot) {
            return Err("no-ram-for-dma");
        }
        let dev = virtio::find(boot, DEVICE_ID_NET).ok_or("no-virtio-net-device")?;
        let net = Net::open(dev).map_err(|e| e.as_str())?;
        let mut session = Self { net, params, peer_mac: [0; 6] };
        session.resolve_peer()?;
        Ok(session)
    }

    fn resolve_peer(&mut self) -> Result<(), &'static str> {
        let start = tsc();
        let mut last_ask = 0u64;
        let mut asked = false;
        while !self.params.secs_passed(start, 20) {
            if !asked || self.params.secs_passed(last_ask, 1) {
                let (mac, ip, peer) = (self.net.mac, self.params.ip, self.params.peer);
                let buf = self.net.tx_buffer();
                eth(buf, BROADCAST, mac, ETH_ARP);
                let len = arp(buf, 1, (mac, ip), ([0; 6], peer));
                self.net.send(len);
                self.net.flush();
                last_ask = tsc();
                asked = true;
            }
            while let Some(frame) = self.net.recv() {
                if ethertype(frame) == ETH_ARP && frame.len() >= ETH + 28 {
                    let a = &frame[ETH..];
                    if a[7] == 2 && a[14..18] == self.params.peer {
                        self.peer_mac.copy_from_slice(&a[8..14]);
                        return Ok(());
                    }
                }
                self.answer_arp(frame);
            }
        }
        Err("peer-arp-timeout")
    }

    /// Answers an ARP request for the probe's address; true when `frame` was ARP.
    pub fn answer_arp(&mut self, frame: &[u8]) -> bool {
        if ethertype(frame) != ETH_ARP || frame.len() < ETH + 28 {
            return false;
        }
        let a = &frame[ETH..];
        if a[7] == 1 && a[24..28] == self.params.ip {
            let mut from_mac = [0u8; 6];
            let mut from_ip = [0u8; 4];
            from_mac.copy_from_slice(&a[8..14]);
            from_ip.copy_from_slice(&a[14..18]);
            let (mac, ip) = (self.net.mac, self.params.ip);
            let buf = self.net.tx_buffer();
            eth(buf, from_mac, mac, ETH_ARP);
            let len = arp(buf, 2, (mac, ip), (from_mac, from_ip));
            self.net.send(len);
            self.net.flush();
        }
        true
    }

    /// Sends a UDP datagram of `payload.len()` bytes to the peer from `src_port`.
    pub fn send_udp_to(&mut self, dst: ([u8; 4], u16), src_port: u16, payload: &[u8]) {
        let (mac, peer_mac, ip) = (self.net.mac, self.peer_mac, self.params.ip);
        let buf = self.net.tx_buffer();
        eth(buf, peer_mac, mac, ETH_IPV4);
        buf[ETH + IP + UDP..ETH + IP + UDP + payload.len()].copy_from_slice(payload);
        let len = udp(buf, (ip, src_port), dst, payload.len());
        self.net.send(len);
    }
}

/// `probe: NAME fail WHAT`.
pub fn fail(name: &str, what: &str) {
    ResultLine::fail(name.as_bytes()).text(what).end();
}
