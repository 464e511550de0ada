//! `vsock-connect`: connects to CID 2 port `probe.port`, sends `probe.bytes` bytes of the
//! stream pattern (`offset % 251`), and meanwhile reads what the host sends back until
//! `probe.reply` bytes (default: as many as sent) came, the host shut down or reset, or
//! `probe.secs` passed; then closes. CRC-32 (IEEE) of both sides:
//! `probe: vsock-connect ok cid=N sent=N sent_crc32=XXXXXXXX received=M received_crc32=XXXXXXXX end=done|shutdown|reset|timeout usecs=T`
//! or `probe: vsock-connect fail cid=N connect=reset|timeout|table-full`.

use crate::crc32::Crc32;
use crate::serial::{put_str, ResultLine};
use crate::vsock_stream::{self, passed, pattern, Event, Params, State};
use crate::zero_page::BootInfo;

use super::blk::put_hex32;

pub const NAME: &str = "vsock-connect";

pub fn connect_failure(state: State) -> &'static str {
    match state {
        State::Reset => "reset",
        State::Connecting => "timeout",
        _ => "table-full",
    }
}

pub fn run(boot: &BootInfo) {
    let p = Params::parse(boot);
    let mut s = match vsock_stream::open(boot) {
        Ok(s) => s,
        Err(e) => return ResultLine::fail(NAME.as_bytes()).text(e).end(),
    };
    let begin = crate::virtio::tsc();
    let deadline = p.deadline_ms(p.secs * 1000);
    let i = match s.connect_wait(p.port, deadline) {
        Ok(i) => i,
        Err(state) => {
            let line = ResultLine::fail(NAME.as_bytes()).dec("cid", s.vs.cid);
            put_str(" connect=");
            put_str(connect_failure(state));
            return line.end();
        }
    };
    let want_back = p.reply.unwrap_or(p.bytes);
    let (mut sent, mut received) = (0u64, 0u64);
    let (mut sent_crc, mut received_crc) = (Crc32::new(), Crc32::new());
    let mut chunk = [0u8; 4096];
    let mut idle_spins = 0u32;
    let end = loop {
        if passed(deadline) {
            break "timeout";
        }
        match s.poll() {
            Event::Data(j, data) if j == i => {
                received_crc.update(data);
                received += data.len() as u64;
                let n = data.len();
                s.consumed(i, n);
            }
            Event::Ended(j) if j == i => {
                break if s.conns[i].state == State::Reset { "reset" } else { "shutdown" };
            }
            _ => {}
        }
        if s.conns[i].peer_shutdown & 2 != 0 {
            break "shutdown";
        }
        if sent < p.bytes {
            let n = ((p.bytes - sent) as usize).min(chunk.len());
            pattern(&mut chunk[..n], sent);
            let done = s.send(i, &chunk[..n]);
            if done > 0 {
                sent_crc.update(&chunk[..done]);
                sent += done as u64;
                idle_spins = 0;
            } else {
                s.vs.flush();
                idle_spins += 1;
                if idle_spins.is_multiple_of(100_000) && s.conns[i].credit() == 0 {
                    s.credit_request(i);
                }
            }
        } else {
            s.vs.flush();
            if received >= want_back {
                break "done";
            }
        }
    };
    s.vs.flush();
    let usecs = p.usecs_since(begin);
    s.close(i);
    s.vs.drain_tx();
    let line = ResultLine::start(NAME.as_bytes(), end == "done" || end == "shutdown").dec("cid", s.vs.cid);
    let line = line.dec("sent", sent);
    put_str(" sent_crc32=");
    put_hex32(sent_crc.finish());
    let line = line.dec("received", received);
    put_str(" received_crc32=");
    put_hex32(received_crc.finish());
    put_str(" end=");
    put_str(end);
    line.dec("usecs", usecs).end();
}
