//! `net-rx`: counts UDP datagrams to the probe's address and `probe.port` until `probe.count`
//! arrived or `probe.secs` passed, answering ARP meanwhile; the time runs from the first.
//! `probe: net-rx ready`, then `probe: net-rx ok received=N bytes=B usecs=T`.

use crate::netstack::{ethertype, fail, Session, ETH, ETH_IPV4, IP, PROTO_UDP, UDP};
use crate::serial::{put_str, ResultLine};
use crate::virtio::tsc;
use crate::zero_page::BootInfo;

pub const NAME: &str = "net-rx";

/// The payload length of a UDP datagram to `ip:port` in `frame`.
pub fn udp_payload_to(frame: &[u8], ip: [u8; 4], port: u16) -> Option<usize> {
    if ethertype(frame) != ETH_IPV4 || frame.len() < ETH + IP + UDP {
        return None;
    }
    let h = &frame[ETH..];
    if h[0] != 0x45 || h[9] != PROTO_UDP || h[16..20] != ip {
        return None;
    }
    let u = &h[IP..];
    if u16::from_be_bytes([u[2], u[3]]) != port {
        return None;
    }
    Some(usize::from(u16::from_be_bytes([u[4], u[5]])).saturating_sub(UDP))
}

pub fn run(boot: &BootInfo) {
    let mut s = match Session::open(boot) {
        Ok(s) => s,
        Err(e) => return fail(NAME, e),
    };
    put_str("probe: net-rx ready\n");
    let (ip, port, count) = (s.params.ip, s.params.port, s.params.count);
    let begin = tsc();
    let mut first = None;
    let (mut received, mut bytes) = (0u64, 0u64);
    while received < count && !s.params.secs_passed(begin, s.params.secs) {
        let Some(frame) = s.net.recv() else { continue };
        if let Some(len) = udp_payload_to(frame, ip, port) {
            first.get_or_insert_with(tsc);
            received += 1;
            bytes += len as u64;
        } else {
            s.answer_arp(frame);
        }
    }
    let usecs = first.map_or(0, |t| s.params.usecs_since(t));
    ResultLine::ok(NAME.as_bytes()).dec("received", received).dec("bytes", bytes).dec("usecs", usecs).end();
}
