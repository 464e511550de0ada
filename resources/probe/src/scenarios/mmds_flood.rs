//! `mmds-flood`: more TCP connections to the MMDS address (`probe.peer=169.254.169.254:80`)
//! than its stack has sockets. Eight completed handshakes are held open without a request;
//! a ninth must be refused (RST); then `probe.count` SYNs (default 2000) from distinct ports
//! (30000 up), never completed, each of which may be answered by an RST (a SYN-ACK would mean
//! a socket the stack does not have). After the per-connection deadline (the probe waits
//! `probe.secs`, default 13 s, from the first hold), a request on each held connection must
//! be refused (RST: the stack dropped them), and a new connection must get a token (200).
//!
//! Lines: `probe: mmds-flood held=8 extra=rst`, `probe: mmds-flood flood-start`,
//! `probe: mmds-flood flood-done sent=N rst=R synack=S`, then
//! `probe: mmds-flood ok held=8 extra=rst sent=N rst=R synack=0 held_rst_usecs=U held_dead=8
//! after=200` (`fail` with the same fields when one is off).

use crate::mmds_client::{self, server};
use crate::netstack::{fail, Session};
use crate::serial::{put_dec, put_str, ResultLine};
use crate::tcp_client::{self, connect, parse, Conn, End, Refused, ACK, RST, SYN};
use crate::virtio::tsc;
use crate::zero_page::BootInfo;

pub const NAME: &str = "mmds-flood";
const HELD: usize = 8;
const HELD_PORT: u16 = 20000;
const FLOOD_PORT: u16 = 30000;

struct Seen {
    rst: u64,
    synack: u64,
    held_rst_at: Option<u64>,
}

/// Takes every frame waiting, counting the server's answers to flood and held ports.
fn drain(s: &mut Session, count: u64, seen: &mut Seen) {
    let srv = server(s);
    while let Some(frame) = s.net.recv() {
        if s.answer_arp(frame) {
            continue;
        }
        let Some(seg) = parse(frame, s.params.ip) else { continue };
        if seg.src != srv.ip || seg.src_port != srv.port {
            continue;
        }
        let port = u64::from(seg.dst_port);
        if port >= u64::from(FLOOD_PORT) && port < u64::from(FLOOD_PORT) + count {
            if seg.flags & RST != 0 {
                seen.rst += 1;
            } else if seg.flags & (SYN | ACK) == SYN | ACK {
                seen.synack += 1;
            }
        } else if port >= u64::from(HELD_PORT) && port < u64::from(HELD_PORT) + HELD as u64 && seg.flags & RST != 0 {
            seen.held_rst_at.get_or_insert(tsc());
        }
    }
}

pub fn run(boot: &BootInfo) {
    let mut s = match Session::open(boot) {
        Ok(s) => s,
        Err(e) => return fail(NAME, e),
    };
    let srv = server(&s);
    let count = s.params.count.min(30000);
    let mut held: [Option<Conn>; HELD] = Default::default();
    let opened = tsc();
    for (i, slot) in held.iter_mut().enumerate() {
        match connect(&mut s, &srv, HELD_PORT + i as u16) {
            Ok(c) => *slot = Some(c),
            Err(e) => return fail(NAME, if e == Refused::Rst { "hold-refused-rst" } else { "hold-timeout" }),
        }
    }
    let extra = match connect(&mut s, &srv, HELD_PORT + HELD as u16) {
        Ok(_) => "open",
        Err(e) => e.as_str(),
    };
    put_str("probe: mmds-flood held=8 extra=");
    put_str(extra);
    put_str("\n");
    put_str("probe: mmds-flood flood-start\n");
    let mut seen = Seen { rst: 0, synack: 0, held_rst_at: None };
    for i in 0..count {
        let port = FLOOD_PORT + i as u16;
        tcp_client::send(&mut s, &srv, port, &tcp_client::Out { seq: i as u32, ack: 0, flags: SYN, window: 1024, payload: &[] });
        drain(&mut s, count, &mut seen);
    }
    let settle = tsc();
    while !s.params.secs_passed(settle, 1) {
        drain(&mut s, count, &mut seen);
    }
    put_str("probe: mmds-flood flood-done sent=");
    put_dec(count);
    put_str(" rst=");
    put_dec(seen.rst);
    put_str(" synack=");
    put_dec(seen.synack);
    put_str("\n");
    while !s.params.secs_passed(opened, s.params.secs) {
        drain(&mut s, count, &mut seen);
    }
    let mut dead = 0u64;
    for conn in held.iter_mut().flatten() {
        let x = tcp_client::exchange(&mut s, &srv, conn, b"GET / HTTP/1.1\r\n\r\n", tcp_client::WINDOW, 3_000_000);
        if x.end == End::Rst && x.received == 0 {
            dead += 1;
        }
    }
    let after = mmds_client::token(&mut s, 21000, b"60").status;
    let held_rst_usecs = seen.held_rst_at.map_or(0, |t| t.wrapping_sub(opened) / s.params.tsc_per_us);
    let ok = extra == "rst" && seen.synack == 0 && dead == HELD as u64 && after == 200;
    ResultLine::start(NAME.as_bytes(), ok)
        .dec("held", HELD as u64)
        .word("extra", extra.as_bytes())
        .dec("sent", count)
        .dec("rst", seen.rst)
        .dec("synack", seen.synack)
        .dec("held_rst_usecs", held_rst_usecs)
        .dec("held_dead", dead)
        .dec("after", u64::from(after))
        .end();
}
