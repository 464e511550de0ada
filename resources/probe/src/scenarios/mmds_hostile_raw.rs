//! The raw-frame and connection cases of `mmds-hostile`: ICMP, UDP and TCP to port 22 of the
//! MMDS address and IP fragments to it (none may be answered: the host checks the tap and
//! the counters), ARP requests from a thousand sender addresses, a SYN flood, and slowloris
//! (eight connections dribbling an endless request head, a ninth refused, all eight aborted
//! at the per-connection deadline). Each prints ` saw=...` and its details.

use crate::mmds_client::server;
use crate::netstack::{arp, checksum, eth, ipv4, tcp_syn, Session, ETH, ETH_ARP, ETH_IPV4, IP, PROTO_ICMP};
use crate::serial::{put_dec, put_str};
use crate::tcp_client::{self, connect, parse, Out, ACK, PSH, RST, SYN};
use crate::virtio::tsc;

use super::mmds_hostile::Ports;

const RAW: &[&str] = &["icmp", "udp", "tcp-22", "fragments", "arp-many-senders", "syn-flood", "slowloris"];

pub fn is_raw(name: &str) -> bool {
    RAW.contains(&name)
}

/// Frames from the MMDS address (IPv4 from it, or ARP from it) within `usecs`.
fn answers_within(s: &mut Session, usecs: u64) -> u64 {
    let mmds = s.params.peer;
    let start = tsc();
    let mut n = 0;
    while s.params.usecs_since(start) < usecs {
        let Some(frame) = s.net.recv() else { continue };
        if s.answer_arp(frame) && frame.len() >= ETH + 28 && frame[ETH + 14..ETH + 18] == mmds {
            n += 1;
        } else if frame.len() >= ETH + IP && frame[12..14] == ETH_IPV4.to_be_bytes() && frame[ETH + 12..ETH + 16] == mmds {
            n += 1;
        }
    }
    n
}

fn say_nothing_or(n: u64) {
    if n == 0 {
        put_str("nothing");
    } else {
        put_str("answered n=");
        put_dec(n);
    }
}

fn icmp(s: &mut Session) {
    let (mac, mmds_mac, ip, mmds) = (s.net.mac, s.peer_mac, s.params.ip, s.params.peer);
    let buf = s.net.tx_buffer();
    eth(buf, mmds_mac, mac, ETH_IPV4);
    let payload = b"mmds-hostile-icmp";
    let m = &mut buf[ETH + IP..ETH + IP + 8 + payload.len()];
    m.fill(0);
    m[0] = 8;
    m[4..6].copy_from_slice(&0x4d4du16.to_be_bytes());
    m[6..8].copy_from_slice(&1u16.to_be_bytes());
    m[8..].copy_from_slice(payload);
    let sum = checksum(m, 0);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    let len = ipv4(buf, ip, mmds, PROTO_ICMP, 8 + payload.len());
    s.net.send(len);
    s.net.drain_tx();
}

fn tcp22(s: &mut Session) {
    let (mac, mmds_mac, ip, mmds) = (s.net.mac, s.peer_mac, s.params.ip, s.params.peer);
    let buf = s.net.tx_buffer();
    eth(buf, mmds_mac, mac, ETH_IPV4);
    let len = tcp_syn(buf, (ip, 40022), (mmds, 22), 7);
    s.net.send(len);
    s.net.drain_tx();
}

/// A SYN to port 80 cut in two IPv4 fragments (first 8 bytes with MF, the rest at offset 1).
fn fragments(s: &mut Session) {
    let (mac, mmds_mac, ip, mmds) = (s.net.mac, s.peer_mac, s.params.ip, s.params.peer);
    for part in 0..2u16 {
        let buf = s.net.tx_buffer();
        eth(buf, mmds_mac, mac, ETH_IPV4);
        tcp_syn(buf, (ip, 40080), (mmds, 80), 9);
        let (start, len) = if part == 0 { (0, 8) } else { (8, 12) };
        if part == 1 {
            buf.copy_within(ETH + IP + 8..ETH + IP + 20, ETH + IP);
        }
        let frame = ipv4(buf, ip, mmds, 6, len);
        let h = &mut buf[ETH..ETH + IP];
        let flags_offset: u16 = if part == 0 { 0x2000 } else { (start / 8) as u16 };
        h[6..8].copy_from_slice(&flags_offset.to_be_bytes());
        h[10..12].fill(0);
        let sum = checksum(h, 0);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        s.net.send(frame);
    }
    s.net.drain_tx();
}

/// ARP requests for the MMDS address from 1,000 sender addresses (and MACs); the replies.
fn arp_many(s: &mut Session) -> u64 {
    let (mac, mmds) = (s.net.mac, s.params.peer);
    let mut replies = 0;
    for i in 0..1000u16 {
        let [hi, lo] = i.to_be_bytes();
        let sender = ([0x02, 0x00, 0x5e, 0x01, hi, lo], [10, 1, hi, lo]);
        let buf = s.net.tx_buffer();
        eth(buf, [0xff; 6], mac, ETH_ARP);
        let len = arp(buf, 1, sender, ([0; 6], mmds));
        s.net.send(len);
        if i % 16 == 15 {
            s.net.flush();
            replies += answers_within(s, 2_000);
        }
    }
    s.net.flush();
    replies + answers_within(s, 500_000)
}

/// 500 SYNs from distinct ports, never completed; the SYN-ACKs (at most one port per socket;
/// `synack` counts ports, `synack_resent` the retransmissions of a port's SYN-ACK) are
/// then reset with a bare RST, as a guest kernel answers a SYN-ACK it did not ask for. Then
/// eight connections are opened again and again (200 ms apart) until all eight are held at
/// once (15 s at most): how long the flood kept the sockets. They are reset (RST|ACK) after.
fn syn_flood(s: &mut Session) {
    let srv = server(s);
    let (mut rst, mut synack, mut resent) = (0u64, 0u64, 0u64);
    let mut to_reset = [(0u16, 0u32); 16];
    let mut take = |s: &mut Session, rst: &mut u64, synack: &mut u64, resent: &mut u64| {
        while let Some(frame) = s.net.recv() {
            if s.answer_arp(frame) {
                continue;
            }
            let Some(seg) = parse(frame, s.params.ip) else { continue };
            if seg.src != srv.ip || !(30000..30500).contains(&seg.dst_port) {
                continue;
            }
            if seg.flags & RST != 0 {
                *rst += 1;
            } else if seg.flags & (SYN | ACK) == SYN | ACK {
                // A socket's SYN-ACK is retransmitted when the flood outlasts its timer (a
                // loaded host): count ports, not segments.
                let known = (*synack as usize).min(to_reset.len());
                if to_reset[..known].iter().any(|&(port, _)| port == seg.dst_port) {
                    *resent += 1;
                    continue;
                }
                if let Some(slot) = to_reset.get_mut(*synack as usize) {
                    *slot = (seg.dst_port, seg.ack);
                }
                *synack += 1;
            }
        }
    };
    for i in 0..500u16 {
        tcp_client::send(s, &srv, 30000 + i, &Out { seq: u32::from(i), ack: 0, flags: SYN, window: 1024, payload: &[] });
        take(s, &mut rst, &mut synack, &mut resent);
    }
    let start = tsc();
    while s.params.usecs_since(start) < 1_000_000 {
        take(s, &mut rst, &mut synack, &mut resent);
    }
    for &(port, seq) in to_reset.iter().take(synack as usize) {
        tcp_client::send(s, &srv, port, &Out { seq, ack: 0, flags: RST, window: 0, payload: &[] });
    }
    let recover = tsc();
    let mut held: [Option<tcp_client::Conn>; 8] = Default::default();
    let mut port = 31000u16;
    while !s.params.secs_passed(recover, 15) && held.iter().any(Option::is_none) {
        for slot in held.iter_mut().filter(|c| c.is_none()) {
            port += 1;
            *slot = connect(s, &srv, port).ok();
        }
        let pause = tsc();
        while held.iter().any(Option::is_none) && s.params.usecs_since(pause) < 200_000 {
            if let Some(frame) = s.net.recv() {
                s.answer_arp(frame);
            }
        }
    }
    let recovered_ms = s.params.usecs_since(recover) / 1000;
    let reopened = held.iter().flatten().count() as u64;
    for c in held.iter().flatten() {
        tcp_client::send(s, &srv, c.local_port, &Out { seq: c.snd_nxt, ack: c.rcv_nxt, flags: RST | ACK, window: 0, payload: &[] });
    }
    put_str("flood rst=");
    put_dec(rst);
    put_str(" synack=");
    put_dec(synack);
    put_str(" synack_resent=");
    put_dec(resent);
    put_str(" reopened=");
    put_dec(reopened);
    put_str(" recovered_ms=");
    put_dec(recovered_ms);
}

/// Eight half-open connections (SYN, SYN-ACK, no ACK), reset with RST|ACK 4 s later: their
/// sockets go back to listening by themselves, and must not hand their deadline on to the
/// next connections (slowloris's, which must then last the full 10 s). How many were reset.
fn reset_half_open(s: &mut Session, ports: &mut Ports) -> u64 {
    let srv = server(s);
    let mut half = [(0u16, 0u32); 8];
    let mut n = 0;
    for slot in half.iter_mut() {
        let port = ports.next();
        tcp_client::send(s, &srv, port, &Out { seq: 77, ack: 0, flags: SYN, window: 1024, payload: &[] });
        if let Some(seg) = tcp_client::wait(s, &srv, port, 1_000_000) {
            if seg.flags & (SYN | ACK) == SYN | ACK {
                *slot = (port, seg.seq.wrapping_add(1));
                n += 1;
            }
        }
    }
    let start = tsc();
    while s.params.usecs_since(start) < 4_000_000 {
        if let Some(frame) = s.net.recv() {
            s.answer_arp(frame);
        }
    }
    for &(port, ack) in half.iter().filter(|h| h.0 != 0) {
        tcp_client::send(s, &srv, port, &Out { seq: 78, ack, flags: RST | ACK, window: 0, payload: &[] });
    }
    n
}

/// Eight connections dribbling a request head one byte a second; a ninth; until all eight
/// are reset (20 s at most).
fn slowloris(s: &mut Session, ports: &mut Ports) {
    let srv = server(s);
    let halfopen = reset_half_open(s, ports);
    let mut conns: [Option<(tcp_client::Conn, Option<u64>)>; 8] = Default::default();
    let start = tsc();
    let (mut refused_rst, mut refused_timeout) = (0u64, 0u64);
    for slot in conns.iter_mut() {
        match connect(s, &srv, ports.next()) {
            Ok(c) => *slot = Some((c, None)),
            Err(tcp_client::Refused::Rst) => refused_rst += 1,
            Err(tcp_client::Refused::Timeout) => refused_timeout += 1,
        }
    }
    let extra = match connect(s, &srv, ports.next()) {
        Ok(_) => "open",
        Err(e) => e.as_str(),
    };
    let head = b"GET /latest HTTP/1.1\r\nX-slow: ";
    for (c, _) in conns.iter_mut().flatten() {
        tcp_client::send(s, &srv, c.local_port, &Out { seq: c.snd_nxt, ack: c.rcv_nxt, flags: ACK | PSH, window: 65535, payload: head });
        c.snd_nxt = c.snd_nxt.wrapping_add(head.len() as u32);
    }
    let mut last_drip = tsc();
    while !s.params.secs_passed(start, 20) && conns.iter().flatten().any(|(_, dead)| dead.is_none()) {
        if s.params.secs_passed(last_drip, 1) {
            for (c, dead) in conns.iter_mut().flatten() {
                if dead.is_none() {
                    tcp_client::send(s, &srv, c.local_port, &Out { seq: c.snd_nxt, ack: c.rcv_nxt, flags: ACK | PSH, window: 65535, payload: b"a" });
                    c.snd_nxt = c.snd_nxt.wrapping_add(1);
                }
            }
            last_drip = tsc();
        }
        let Some(frame) = s.net.recv() else { continue };
        if s.answer_arp(frame) {
            continue;
        }
        let Some(seg) = parse(frame, s.params.ip) else { continue };
        if seg.src != srv.ip || seg.flags & RST == 0 {
            continue;
        }
        for (c, dead) in conns.iter_mut().flatten() {
            if c.local_port == seg.dst_port && dead.is_none() {
                *dead = Some(s.params.usecs_since(start) / 1000);
            }
        }
    }
    let times = conns.iter().flatten().filter_map(|(_, dead)| *dead);
    let (aborted, min_ms, max_ms) = times.fold((0u64, u64::MAX, 0u64), |(n, lo, hi), t| (n + 1, lo.min(t), hi.max(t)));
    let opened = conns.iter().flatten().count() as u64;
    put_str("slow halfopen=");
    put_dec(halfopen);
    put_str(" opened=");
    put_dec(opened);
    put_str(" refused_rst=");
    put_dec(refused_rst);
    put_str(" refused_timeout=");
    put_dec(refused_timeout);
    put_str(" extra=");
    put_str(extra);
    put_str(" aborted=");
    put_dec(aborted);
    put_str(" min_ms=");
    put_dec(if aborted == 0 { 0 } else { min_ms });
    put_str(" max_ms=");
    put_dec(max_ms);
}

pub fn run_case(s: &mut Session, ports: &mut Ports, name: &str) {
    match name {
        "icmp" => {
            icmp(s);
            say_nothing_or(answers_within(s, 500_000));
        }
        "udp" => {
            let mmds = s.params.peer;
            s.send_udp_to((mmds, 80), 40053, b"mmds-hostile-udp");
            s.net.drain_tx();
            say_nothing_or(answers_within(s, 500_000));
        }
        "tcp-22" => {
            tcp22(s);
            say_nothing_or(answers_within(s, 500_000));
        }
        "fragments" => {
            fragments(s);
            say_nothing_or(answers_within(s, 500_000));
        }
        "arp-many-senders" => {
            put_str("arp replies=");
            put_dec(arp_many(s));
        }
        "syn-flood" => syn_flood(s),
        _ => slowloris(s, ports),
    }
}
