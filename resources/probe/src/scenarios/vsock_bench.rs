//! `vsock-bench`: throughput over one connection to CID 2 port `probe.port`. First the guest
//! sends `probe.bytes` bytes (16 KiB packets; timed until the device has taken the last one),
//! then it receives `probe.reply` bytes (default as many; timed from the first byte to the
//! last), which the host sends once it has read everything. Then it closes. Times from the
//! TSC (`probe.tsc_mhz`); cycles are raw TSC ticks.
//! `probe: vsock-bench connected cid=N port=P connect_usecs=U` (REQUEST to RESPONSE), `probe: vsock-bench tx-start`,
//! `probe: vsock-bench tx-done bytes=N usecs=U cycles=C`,
//! `probe: vsock-bench rx-done bytes=M usecs=U cycles=C`, then
//! `probe: vsock-bench ok tx_bytes=N tx_kib_s=K rx_bytes=M rx_kib_s=K` or
//! `probe: vsock-bench fail ... end=reset|shutdown|timeout`.

use crate::serial::{put_str, ResultLine};
use crate::virtio::tsc;
use crate::virtio::vsock::TX_BUF;
use crate::vsock_stream::{self, passed, Event, Params, State};
use crate::zero_page::BootInfo;

use super::vsock_connect::connect_failure;

pub const NAME: &str = "vsock-bench";

fn kib_per_s(bytes: u64, usecs: u64) -> u64 {
    bytes * 1_000_000 / 1024 / usecs.max(1)
}

fn fail(what: &str, value: &str) {
    let line = ResultLine::fail(NAME.as_bytes()).text(what);
    put_str(value);
    line.end();
}

pub fn run(boot: &BootInfo) {
    let p = Params::parse(boot);
    let mut s = match vsock_stream::open(boot) {
        Ok(s) => s,
        Err(e) => return ResultLine::fail(NAME.as_bytes()).text(e).end(),
    };
    let deadline = p.deadline_ms(p.secs * 1000);
    let connect_start = tsc();
    let i = match s.connect_wait(p.port, deadline) {
        Ok(i) => i,
        Err(state) => return fail("connect=", connect_failure(state)),
    };
    let connect_usecs = p.usecs_since(connect_start);
    put_str("probe: vsock-bench connected");
    ResultLine.dec("cid", s.vs.cid).dec("port", u64::from(p.port)).dec("connect_usecs", connect_usecs).end();
    put_str("probe: vsock-bench tx-start\n");
    let chunk = [0x5au8; TX_BUF as usize];
    let start = tsc();
    let mut sent = 0u64;
    let mut spins = 0u32;
    let mut rx_start = None;
    let want_back = p.reply.unwrap_or(p.bytes);
    let mut received = 0u64;
    while sent < p.bytes {
        if passed(deadline) || s.conns[i].state != State::Open {
            return fail("end=", if s.conns[i].state == State::Reset { "reset" } else { "timeout" });
        }
        let n = ((p.bytes - sent) as usize).min(chunk.len());
        let done = s.send(i, &chunk[..n]);
        sent += done as u64;
        if done == 0 {
            s.vs.flush();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(100_000) && s.conns[i].credit() == 0 {
                s.credit_request(i);
            }
            if let Event::Data(_, data) = s.poll() {
                rx_start.get_or_insert_with(tsc);
                received += data.len() as u64;
                s.consumed(i, data.len());
            }
        }
    }
    s.vs.drain_tx();
    let tx_cycles = tsc().wrapping_sub(start);
    let tx_usecs = tx_cycles / p.tsc_per_us;
    put_str("probe: vsock-bench tx-done");
    ResultLine.dec("bytes", sent).dec("usecs", tx_usecs).dec("cycles", tx_cycles).end();
    let end = loop {
        if received >= want_back {
            break "done";
        }
        if passed(deadline) {
            break "timeout";
        }
        match s.poll() {
            Event::Data(_, data) => {
                rx_start.get_or_insert_with(tsc);
                received += data.len() as u64;
                s.consumed(i, data.len());
            }
            Event::Ended(_) => break if s.conns[i].state == State::Reset { "reset" } else { "shutdown" },
            _ => {}
        }
    };
    let rx_cycles = rx_start.map_or(0, |t| tsc().wrapping_sub(t));
    let rx_usecs = rx_cycles / p.tsc_per_us;
    s.close(i);
    s.vs.drain_tx();
    put_str("probe: vsock-bench rx-done");
    ResultLine.dec("bytes", received).dec("usecs", rx_usecs).dec("cycles", rx_cycles).end();
    if end != "done" {
        return fail("end=", end);
    }
    ResultLine::ok(NAME.as_bytes())
        .dec("tx_bytes", sent)
        .dec("tx_kib_s", kib_per_s(sent, tx_usecs))
        .dec("rx_bytes", received)
        .dec("rx_kib_s", kib_per_s(received, rx_usecs))
        .end();
}
