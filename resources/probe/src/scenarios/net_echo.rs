//! `net-echo`: for `probe.secs`, answers ARP, ICMP echo requests and UDP datagrams to
//! `probe.port` (sent back to where they came from); a request whose answer would not fit one
//! TX buffer (the RX side takes frames up to 64 KiB) is dropped and counted.
//! `probe: net-echo ready`, then `probe: net-echo ok pings=N too_big=K udp=M`.

use crate::netstack::{checksum, eth, ethertype, fail, ipv4, udp, Session, ETH, ETH_IPV4, IP, PROTO_ICMP, UDP};
use crate::serial::{put_str, ResultLine};
use crate::virtio::tsc;
use crate::zero_page::BootInfo;

pub const NAME: &str = "net-echo";

fn addr(b: &[u8]) -> [u8; 4] {
    [b[0], b[1], b[2], b[3]]
}

pub fn run(boot: &BootInfo) {
    let mut s = match Session::open(boot) {
        Ok(s) => s,
        Err(e) => return fail(NAME, e),
    };
    put_str("probe: net-echo ready\n");
    let (ip, port, mac) = (s.params.ip, s.params.port, s.net.mac);
    let begin = tsc();
    let (mut pings, mut datagrams, mut too_big) = (0u64, 0u64, 0u64);
    while !s.params.secs_passed(begin, s.params.secs) {
        let Some(frame) = s.net.recv() else { continue };
        if s.answer_arp(frame) || ethertype(frame) != ETH_IPV4 || frame.len() < ETH + IP + 8 {
            continue;
        }
        let h = &frame[ETH..];
        let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
        if h[0] != 0x45 || addr(&h[16..20]) != ip || total < IP + 8 || ETH + total > frame.len() {
            continue;
        }
        let (src_mac, src_ip) = (frame[6..12].try_into().unwrap_or([0; 6]), addr(&h[12..16]));
        let l4 = &h[IP..total];
        if h[9] == PROTO_ICMP && l4[0] == 8 {
            let buf = s.net.tx_buffer();
            if ETH + IP + l4.len() > buf.len() {
                too_big += 1;
                continue;
            }
            eth(buf, src_mac, mac, ETH_IPV4);
            let icmp = &mut buf[ETH + IP..ETH + IP + l4.len()];
            icmp.copy_from_slice(l4);
            icmp[0] = 0;
            icmp[2..4].fill(0);
            let sum = checksum(icmp, 0);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            let len = ipv4(buf, ip, src_ip, PROTO_ICMP, l4.len());
            s.net.send(len);
            s.net.flush();
            pings += 1;
        } else if h[9] == 17 && u16::from_be_bytes([l4[2], l4[3]]) == port {
            let src_port = u16::from_be_bytes([l4[0], l4[1]]);
            let payload = &l4[UDP..];
            let buf = s.net.tx_buffer();
            if ETH + IP + UDP + payload.len() > buf.len() {
                too_big += 1;
                continue;
            }
            eth(buf, src_mac, mac, ETH_IPV4);
            buf[ETH + IP + UDP..ETH + IP + UDP + payload.len()].copy_from_slice(payload);
            let len = udp(buf, (ip, port), (src_ip, src_port), payload.len());
            s.net.send(len);
            s.net.flush();
            datagrams += 1;
        }
    }
    ResultLine::ok(NAME.as_bytes()).dec("pings", pings).dec("too_big", too_big).dec("udp", datagrams).end();
}
