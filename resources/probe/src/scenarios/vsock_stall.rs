//! `vsock-stall`: a guest that stops reading. Listens on `probe.port` with a 64 KiB
//! buf_alloc and accepts one host connection (waiting up to 30 s), then for `probe.secs`
//! (default 10) takes packets off the RX queue but consumes nothing (fwd_cnt stays put, no
//! credit update: the device must not send more than 64 KiB), then for `probe.secs` does not
//! touch the RX queue at all, then consumes everything until the host closes, `probe.bytes`
//! arrived or 30 s passed.
//! `probe: vsock-stall ready cid=N port=P buf_alloc=65536`, `probe: vsock-stall accepted`,
//! `probe: vsock-stall not-polling held=N over_credit=M` (bytes taken while not consuming,
//! bytes beyond the credit), `probe: vsock-stall resumed`, then
//! `probe: vsock-stall ok held=N over_credit=0 received=R end=done|shutdown|reset|timeout`
//! (`fail` when over_credit > 0 or nothing came).

use crate::serial::{put_str, ResultLine};
use crate::vsock_stream::{self, passed, Event, Params, State};
use crate::zero_page::BootInfo;

pub const NAME: &str = "vsock-stall";
const BUF_ALLOC: u32 = 64 * 1024;

pub fn run(boot: &BootInfo) {
    let p = Params::parse(boot);
    let mut s = match vsock_stream::open(boot) {
        Ok(s) => s,
        Err(e) => return ResultLine::fail(NAME.as_bytes()).text(e).end(),
    };
    s.listen_port = p.port;
    s.buf_alloc = BUF_ALLOC;
    put_str("probe: vsock-stall ready");
    ResultLine.dec("cid", s.vs.cid).dec("port", u64::from(p.port)).dec("buf_alloc", u64::from(BUF_ALLOC)).end();
    let accept_deadline = p.deadline_ms(30_000);
    let i = loop {
        if passed(accept_deadline) {
            return ResultLine::fail(NAME.as_bytes()).text("no-connection").end();
        }
        if let Event::Accepted(i) = s.poll() {
            break i;
        }
    };
    put_str("probe: vsock-stall accepted\n");
    let mut held = 0u64;
    let until = p.deadline_ms(p.secs * 1000);
    while !passed(until) {
        if let Event::Data(j, data) = s.poll() {
            if j == i {
                held += data.len() as u64;
            }
        }
    }
    let over_credit = s.over_credit;
    put_str("probe: vsock-stall not-polling");
    ResultLine.dec("held", held).dec("over_credit", over_credit).end();
    let until = p.deadline_ms(p.secs * 1000);
    while !passed(until) {
        core::hint::spin_loop();
    }
    put_str("probe: vsock-stall resumed\n");
    s.consumed(i, held as usize);
    let mut received = held;
    let deadline = p.deadline_ms(30_000);
    let end = loop {
        if received >= p.bytes {
            break "done";
        }
        if passed(deadline) {
            break "timeout";
        }
        match s.poll() {
            Event::Data(j, data) if j == i => {
                received += data.len() as u64;
                s.consumed(i, data.len());
            }
            Event::Ended(j) if j == i => break if s.conns[i].state == State::Reset { "reset" } else { "shutdown" },
            _ => {}
        }
    };
    s.close(i);
    s.vs.drain_tx();
    let line = ResultLine::start(NAME.as_bytes(), over_credit == 0 && s.over_credit == 0 && held > 0);
    let line = line.dec("held", held).dec("over_credit", s.over_credit).dec("received", received);
    put_str(" end=");
    put_str(end);
    line.end();
}
