//! `mmds-hostile`: attacks on the MMDS responder (`probe.peer=169.254.169.254:80`), one case
//! at a time, each followed by a good request (a token PUT from a fresh port, which must be
//! answered 200). The HTTP cases are here; the raw-frame and connection cases are in
//! `mmds_hostile_raw.rs`. The store must hold a string of about 45,000 bytes at `/big` (the
//! zero-window and large-read cases).
//!
//! The host drives: the probe prints `probe: mmds-hostile ready`, then before every case waits
//! (up to 30 s) for a UDP datagram to `probe.port` (the host flushes metrics in between, so
//! each case's counters are its own), then prints
//! `probe: mmds-hostile case NAME saw=WHAT [k=v ...] good=STATUS`. At the end it sends a UDP
//! datagram `mmds-hostile-end` to the host (the MAC and address the go-ahead came from, port
//! `probe.port` + 1) and prints `probe: mmds-hostile ok cases=N`.

use crate::mmds_client::{self, ask, server, token, Request};
use crate::netstack::{eth, ethertype, fail, udp, Session, ETH, ETH_IPV4, IP, UDP};
use crate::serial::{put_dec, put_str, ResultLine};
use crate::tcp_client::{self, End};
use crate::virtio::tsc;
use crate::zero_page::BootInfo;

use super::mmds_hostile_raw as raw;

pub const NAME: &str = "mmds-hostile";

/// The cases in order.
pub const CASES: &[&str] = &[
    "head-over-4k", "forged-token", "expired-token", "bad-mac-token", "xff-on-put", "ttl-0", "ttl-21601",
    "ttl-non-numeric", "pipelined", "garbage", "big-read", "zero-window", "icmp", "udp", "tcp-22", "fragments",
    "arp-many-senders", "syn-flood", "slowloris",
];

/// The host, learnt from the first go-ahead.
pub struct Host {
    pub mac: [u8; 6],
    pub ip: [u8; 4],
}

/// Local ports: each request from a port of its own (a new connection every time).
pub struct Ports(u16);

impl Ports {
    pub fn next(&mut self) -> u16 {
        self.0 = if self.0 >= 60000 { 42000 } else { self.0 + 1 };
        self.0
    }
}

/// Waits up to 30 s for a UDP datagram to `port`; the sender, if one came.
fn wait_for_go(s: &mut Session, port: u16) -> Option<Host> {
    let start = tsc();
    while !s.params.secs_passed(start, 30) {
        let Some(frame) = s.net.recv() else { continue };
        if s.answer_arp(frame) || ethertype(frame) != ETH_IPV4 || frame.len() < ETH + IP + UDP {
            continue;
        }
        let h = &frame[ETH..];
        if h[0] == 0x45 && h[9] == 17 && h[16..20] == s.params.ip && u16::from_be_bytes([h[22], h[23]]) == port {
            let mut host = Host { mac: [0; 6], ip: [0; 4] };
            host.mac.copy_from_slice(&frame[6..12]);
            host.ip.copy_from_slice(&h[12..16]);
            return Some(host);
        }
    }
    None
}

/// The status of one request, 0 if it was not answered.
fn status_of(s: &mut Session, ports: &mut Ports, request: &[u8]) -> u16 {
    let port = ports.next();
    ask(s, port, request).map_or(0, |x| x.status())
}

fn ttl_put(ttl: &[u8]) -> Request {
    let mut r = Request::new();
    r.push(b"PUT /latest/api/token HTTP/1.1\r\n").header(b"X-metadata-token-ttl-seconds", ttl).push(b"\r\n");
    r
}

fn get_with(path: &[u8], tok: &[u8]) -> Request {
    let mut r = Request::new();
    r.push(b"GET ").push(path).push(b" HTTP/1.1\r\n").header(b"X-metadata-token", tok).push(b"\r\n");
    r
}

/// A token with TTL `ttl` into `tok`: (status, length).
fn fresh(s: &mut Session, ports: &mut Ports, ttl: &[u8], tok: &mut [u8]) -> (u16, usize) {
    let t = token(s, ports.next(), ttl);
    let n = t.as_bytes().len();
    tok[..n].copy_from_slice(t.as_bytes());
    (t.status, n)
}

/// Runs the HTTP case `name`; prints ` saw=...` and its details.
fn http_case(s: &mut Session, ports: &mut Ports, name: &str) {
    let mut tok = [0u8; mmds_client::TOKEN_MAX];
    let status = match name {
        "head-over-4k" => {
            let mut r = Request::new();
            r.push(b"GET /latest HTTP/1.1\r\nX-pad: ").fill(b'a', 5000).push(b"\r\n\r\n");
            status_of(s, ports, r.bytes())
        }
        "forged-token" => {
            let mut forged = [b'f'; 80];
            forged[..16].copy_from_slice(b"00000fffffffffff");
            status_of(s, ports, get_with(b"/latest", &forged).bytes())
        }
        "expired-token" => {
            let (st, n) = fresh(s, ports, b"1", &mut tok);
            if st != 200 {
                0
            } else {
                let start = tsc();
                while s.params.usecs_since(start) < 2_200_000 {
                    let _ = s.net.recv();
                }
                status_of(s, ports, get_with(b"/latest", &tok[..n]).bytes())
            }
        }
        "bad-mac-token" => {
            let (st, n) = fresh(s, ports, b"60", &mut tok);
            if st != 200 || n == 0 {
                0
            } else {
                tok[n - 1] = if tok[n - 1] == b'0' { b'1' } else { b'0' };
                status_of(s, ports, get_with(b"/latest", &tok[..n]).bytes())
            }
        }
        "xff-on-put" => {
            let mut r = Request::new();
            r.push(b"PUT /latest/api/token HTTP/1.1\r\n")
                .header(b"X-metadata-token-ttl-seconds", b"60")
                .header(b"X-Forwarded-For", b"203.0.113.9")
                .push(b"\r\n");
            status_of(s, ports, r.bytes())
        }
        "ttl-0" => status_of(s, ports, ttl_put(b"0").bytes()),
        "ttl-21601" => status_of(s, ports, ttl_put(b"21601").bytes()),
        "ttl-non-numeric" => status_of(s, ports, ttl_put(b"sixty").bytes()),
        "pipelined" => {
            let (_, n) = fresh(s, ports, b"60", &mut tok);
            let mut r = get_with(b"/latest/meta-data/instance-id", &tok[..n]);
            let second = get_with(b"/big", &tok[..n]);
            r.push(second.bytes());
            let port = ports.next();
            let x = ask(s, port, r.bytes());
            let answers = x.as_ref().map_or(0, |x| x.response().windows(9).filter(|w| w == b"HTTP/1.1 ").count());
            put_str(" responses=");
            put_dec(answers as u64);
            put_str(" end=");
            put_str(x.as_ref().map_or("refused", |x| x.end.as_str()));
            x.map_or(0, |x| x.status())
        }
        "garbage" => {
            let mut r = Request::new();
            for b in 0..=255u8 {
                r.push(&[b]);
            }
            r.push(b"\r\n\r\n");
            status_of(s, ports, r.bytes())
        }
        "big-read" => {
            let (_, n) = fresh(s, ports, b"60", &mut tok);
            let port = ports.next();
            let x = ask(s, port, get_with(b"/big", &tok[..n]).bytes());
            put_str(" body=");
            put_dec(x.as_ref().map_or(0, |x| x.body().len() as u64));
            x.map_or(0, |x| x.status())
        }
        "zero-window" => {
            let (_, n) = fresh(s, ports, b"60", &mut tok);
            let srv = server(s);
            let port = ports.next();
            let start = tsc();
            match tcp_client::connect(s, &srv, port) {
                Ok(mut conn) => {
                    let r = get_with(b"/big", &tok[..n]);
                    let x = tcp_client::exchange(s, &srv, &mut conn, r.bytes(), 0, 20_000_000);
                    put_str(" end=");
                    put_str(x.end.as_str());
                    put_str(" received=");
                    put_dec(x.received as u64);
                    put_str(" ms=");
                    put_dec(s.params.usecs_since(start) / 1000);
                    if x.end == End::Rst {
                        1
                    } else {
                        0
                    }
                }
                Err(_) => 0,
            }
        }
        _ => 0,
    };
    put_str(" status=");
    put_dec(u64::from(status));
}

pub fn run(boot: &BootInfo) {
    let mut s = match Session::open(boot) {
        Ok(s) => s,
        Err(e) => return fail(NAME, e),
    };
    let go = s.params.port;
    let mut ports = Ports(42000);
    put_str("probe: mmds-hostile ready\n");
    let mut host = None;
    for name in CASES {
        match wait_for_go(&mut s, go) {
            Some(h) => host = Some(h),
            None => return fail(NAME, "no-go-from-host"),
        }
        put_str("probe: mmds-hostile case ");
        put_str(name);
        put_str(" saw=");
        if raw::is_raw(name) {
            raw::run_case(&mut s, &mut ports, name);
        } else {
            put_str("http");
            http_case(&mut s, &mut ports, name);
        }
        let good = token(&mut s, ports.next(), b"60").status;
        put_str(" good=");
        put_dec(u64::from(good));
        put_str("\n");
    }
    if wait_for_go(&mut s, go).is_none() {
        return fail(NAME, "no-go-from-host");
    }
    if let Some(h) = host {
        let (mac, ip) = (s.net.mac, s.params.ip);
        let buf = s.net.tx_buffer();
        eth(buf, h.mac, mac, ETH_IPV4);
        let marker = b"mmds-hostile-end";
        buf[ETH + IP + UDP..ETH + IP + UDP + marker.len()].copy_from_slice(marker);
        let len = udp(buf, (ip, go), (h.ip, go + 1), marker.len());
        s.net.send(len);
        s.net.drain_tx();
    }
    ResultLine::ok(NAME.as_bytes()).dec("cases", CASES.len() as u64).end();
}
