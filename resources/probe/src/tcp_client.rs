//! A minimal TCP client for the MMDS scenarios: SYN (with an MSS option), the SYN-ACK's IP TTL
//! noted, ACK, a request sent stop-and-wait in chunks, the response segments read in order
//! (each acknowledged with the window the caller chose, 0 to read nothing), the server's FIN
//! answered with ours. Out-of-order data is not kept (a duplicate ACK asks again); lost
//! segments are sent again after 500 ms. Enough to talk to one server at a time, and to
//! misbehave on purpose (hold a connection, stop reading, flood SYNs).
//!
//! The response lands in a fixed RAM window ([`RESPONSE_ADDR`], [`RESPONSE_MAX`] bytes) of the
//! DMA area that the virtio-net driver does not use.

use crate::netstack::{checksum, eth, ethertype, ipv4, Session, ETH, ETH_IPV4, IP, PROTO_TCP};
use crate::virtio::dma::{self, DATA_START};
use crate::virtio::tsc;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
/// Where responses are written (above the virtio-net rings and buffers).
pub const RESPONSE_ADDR: u64 = DATA_START + 0x10_0000;
/// The most of a response kept.
pub const RESPONSE_MAX: usize = 0x20_0000;
/// Request bytes per segment.
const CHUNK: usize = 1024;
const TCP: usize = 20;
/// Our receive window when the caller reads normally.
pub const WINDOW: u16 = 65535;

/// The server: its MAC (resolved by ARP), address and port.
#[derive(Clone, Copy)]
pub struct Server {
    pub mac: [u8; 6],
    pub ip: [u8; 4],
    pub port: u16,
}

/// A received TCP segment (the payload is valid until the next `recv`).
pub struct Segment {
    pub src: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub ttl: u8,
    pub payload: &'static [u8],
}

/// Parses `frame` as an IPv4 TCP segment to `local` (header and length checked).
pub fn parse(frame: &'static [u8], local: [u8; 4]) -> Option<Segment> {
    if ethertype(frame) != ETH_IPV4 || frame.len() < ETH + IP + TCP {
        return None;
    }
    let h = &frame[ETH..];
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if h[0] >> 4 != 4 || ihl < IP || h[9] != PROTO_TCP || h[16..20] != local || total > h.len() || total < ihl + TCP {
        return None;
    }
    let t = &h[ihl..total];
    let off = usize::from(t[12] >> 4) * 4;
    if off < TCP || off > t.len() {
        return None;
    }
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some(Segment {
        src: [h[12], h[13], h[14], h[15]],
        src_port: u16::from_be_bytes([t[0], t[1]]),
        dst_port: u16::from_be_bytes([t[2], t[3]]),
        seq: be32(&t[4..8]),
        ack: be32(&t[8..12]),
        flags: t[13],
        ttl: h[8],
        payload: &t[off..],
    })
}

/// What the caller puts in one segment.
pub struct Out<'a> {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub payload: &'a [u8],
}

/// Sends one segment from `local_port` to `server` (an MSS option of 1460 on a SYN).
pub fn send(s: &mut Session, server: &Server, local_port: u16, out: &Out) {
    let (mac, ip) = (s.net.mac, s.params.ip);
    let buf = s.net.tx_buffer();
    eth(buf, server.mac, mac, ETH_IPV4);
    let opt = if out.flags & SYN != 0 { 4 } else { 0 };
    let len = TCP + opt + out.payload.len();
    let t = &mut buf[ETH + IP..ETH + IP + len];
    t[..TCP + opt].fill(0);
    t[0..2].copy_from_slice(&local_port.to_be_bytes());
    t[2..4].copy_from_slice(&server.port.to_be_bytes());
    t[4..8].copy_from_slice(&out.seq.to_be_bytes());
    t[8..12].copy_from_slice(&out.ack.to_be_bytes());
    t[12] = (((TCP + opt) / 4) as u8) << 4;
    t[13] = out.flags;
    t[14..16].copy_from_slice(&out.window.to_be_bytes());
    if opt > 0 {
        t[TCP..TCP + 4].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    }
    t[TCP + opt..].copy_from_slice(out.payload);
    let w = |b: [u8; 4]| u32::from(u16::from_be_bytes([b[0], b[1]])) + u32::from(u16::from_be_bytes([b[2], b[3]]));
    let sum = checksum(t, w(ip) + w(server.ip) + u32::from(PROTO_TCP) + len as u32);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    let frame = ipv4(buf, ip, server.ip, PROTO_TCP, len);
    s.net.send(frame);
    s.net.flush();
}

/// The next TCP segment from `server` to `local_port`, answering ARP meanwhile; `None` after
/// `usecs`.
pub fn wait(s: &mut Session, server: &Server, local_port: u16, usecs: u64) -> Option<Segment> {
    let start = tsc();
    while s.params.usecs_since(start) < usecs {
        let Some(frame) = s.net.recv() else { continue };
        if s.answer_arp(frame) {
            continue;
        }
        if let Some(seg) = parse(frame, s.params.ip) {
            if seg.src == server.ip && seg.src_port == server.port && seg.dst_port == local_port {
                return Some(seg);
            }
        }
    }
    None
}

/// Why a connection did not open.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Rst,
    Timeout,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Rst => "rst",
            Refused::Timeout => "timeout",
        }
    }
}

/// An open connection.
pub struct Conn {
    pub local_port: u16,
    /// Next sequence number we send.
    pub snd_nxt: u32,
    /// Next sequence number we expect.
    pub rcv_nxt: u32,
    /// The SYN-ACK's IP TTL.
    pub syn_ack_ttl: u8,
}

/// SYN, SYN-ACK, ACK from `local_port` (the SYN is sent again each second, up to 3 s).
pub fn connect(s: &mut Session, server: &Server, local_port: u16) -> Result<Conn, Refused> {
    let iss = (tsc() as u32) ^ (u32::from(local_port) << 16);
    for _ in 0..3 {
        send(s, server, local_port, &Out { seq: iss, ack: 0, flags: SYN, window: WINDOW, payload: &[] });
        let start = tsc();
        while s.params.usecs_since(start) < 1_000_000 {
            let Some(seg) = wait(s, server, local_port, 100_000) else { continue };
            if seg.flags & RST != 0 {
                return Err(Refused::Rst);
            }
            if seg.flags & (SYN | ACK) == SYN | ACK && seg.ack == iss.wrapping_add(1) {
                let conn = Conn {
                    local_port,
                    snd_nxt: iss.wrapping_add(1),
                    rcv_nxt: seg.seq.wrapping_add(1),
                    syn_ack_ttl: seg.ttl,
                };
                send(s, server, local_port, &Out { seq: conn.snd_nxt, ack: conn.rcv_nxt, flags: ACK, window: WINDOW, payload: &[] });
                return Ok(conn);
            }
        }
    }
    Err(Refused::Timeout)
}

/// How an exchange ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server closed after its answer (we closed too).
    Fin,
    Rst,
    Timeout,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Fin => "fin",
            End::Rst => "rst",
            End::Timeout => "timeout",
        }
    }
}

/// What an exchange saw.
pub struct Exchange {
    pub end: End,
    /// Response bytes received (those beyond [`RESPONSE_MAX`] are counted, not kept).
    pub received: usize,
    /// Lowest and highest IP TTL of the server's segments.
    pub min_ttl: u8,
    pub max_ttl: u8,
}

impl Exchange {
    /// The kept response bytes.
    pub fn response(&self) -> &'static [u8] {
        dma::slice(RESPONSE_ADDR, self.received.min(RESPONSE_MAX))
    }

    /// The status code of an HTTP response (0 if there is none).
    pub fn status(&self) -> u16 {
        let r = self.response();
        if r.len() < 12 || &r[..5] != b"HTTP/" {
            return 0;
        }
        r[9..12].iter().try_fold(0u16, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u16::from(c - b'0'))).unwrap_or(0)
    }

    /// The body (after the blank line), empty if there is none.
    pub fn body(&self) -> &'static [u8] {
        let r = self.response();
        match r.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(at) => &r[at + 4..],
            None => &[],
        }
    }
}

/// Sends `request` on `conn`, reads the answer until the server's FIN (answered with ours),
/// an RST, or `usecs`. `window` is what we advertise: 0 reads nothing.
pub fn exchange(s: &mut Session, server: &Server, conn: &mut Conn, request: &[u8], window: u16, usecs: u64) -> Exchange {
    let mut x = Exchange { end: End::Timeout, received: 0, min_ttl: 255, max_ttl: 0 };
    let base = conn.snd_nxt;
    let mut acked = 0usize; // request bytes the server acknowledged
    let mut in_flight = 0usize;
    let mut sent_at = 0u64;
    let mut peer_fin = false;
    let mut our_fin_seq: Option<u32> = None;
    let start = tsc();
    while s.params.usecs_since(start) < usecs {
        // The next chunk (or the same again after 500 ms without its ACK).
        let stalled = in_flight > 0 && s.params.usecs_since(sent_at) > 500_000;
        if !peer_fin && acked < request.len() && (in_flight == 0 || stalled) {
            let chunk = &request[acked..request.len().min(acked + CHUNK)];
            let seq = base.wrapping_add(acked as u32);
            send(s, server, conn.local_port, &Out { seq, ack: conn.rcv_nxt, flags: ACK | PSH, window, payload: chunk });
            in_flight = chunk.len();
            sent_at = tsc();
            conn.snd_nxt = seq.wrapping_add(chunk.len() as u32);
        }
        let Some(seg) = wait(s, server, conn.local_port, 10_000) else {
            if our_fin_seq.is_some() && s.params.usecs_since(sent_at) > 500_000 {
                // The ACK of our FIN was lost, or the server is gone: done either way.
                x.end = End::Fin;
                return x;
            }
            continue;
        };
        x.min_ttl = x.min_ttl.min(seg.ttl);
        x.max_ttl = x.max_ttl.max(seg.ttl);
        if seg.flags & RST != 0 {
            x.end = End::Rst;
            return x;
        }
        if seg.flags & ACK != 0 {
            let done = seg.ack.wrapping_sub(base) as usize;
            if done <= request.len() && done > acked {
                acked = done;
                in_flight = 0;
            }
            if let Some(seq) = our_fin_seq {
                if seg.ack == seq.wrapping_add(1) {
                    x.end = End::Fin;
                    return x;
                }
            }
        }
        if !seg.payload.is_empty() && window > 0 && seg.seq == conn.rcv_nxt {
            let keep = seg.payload.len().min(RESPONSE_MAX.saturating_sub(x.received));
            if keep > 0 {
                dma::write_bytes(RESPONSE_ADDR + x.received as u64, &seg.payload[..keep]);
            }
            x.received += seg.payload.len();
            conn.rcv_nxt = conn.rcv_nxt.wrapping_add(seg.payload.len() as u32);
        }
        if seg.flags & FIN != 0 && !peer_fin && seg.seq.wrapping_add(seg.payload.len() as u32) == conn.rcv_nxt {
            conn.rcv_nxt = conn.rcv_nxt.wrapping_add(1);
            peer_fin = true;
        }
        if peer_fin && our_fin_seq.is_none() {
            let seq = base.wrapping_add(acked as u32);
            send(s, server, conn.local_port, &Out { seq, ack: conn.rcv_nxt, flags: FIN | ACK, window, payload: &[] });
            our_fin_seq = Some(seq);
            conn.snd_nxt = seq.wrapping_add(1);
            sent_at = tsc();
        } else if !seg.payload.is_empty() || seg.flags & FIN != 0 {
            send(s, server, conn.local_port, &Out { seq: conn.snd_nxt, ack: conn.rcv_nxt, flags: ACK, window, payload: &[] });
        }
    }
    x
}

/// connect + exchange; `Err` when the connection did not open.
pub fn request(s: &mut Session, server: &Server, local_port: u16, request: &[u8], usecs: u64) -> Result<(Conn, Exchange), Refused> {
    let mut conn = connect(s, server, local_port)?;
    let x = exchange(s, server, &mut conn, request, WINDOW, usecs);
    Ok((conn, x))
}
