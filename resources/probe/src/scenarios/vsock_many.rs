//! `vsock-many`: opens connections to CID 2 port `probe.port` one after the other, holding
//! them all, until one is refused or `probe.count` (default 1, at most 127) are open; then
//! closes them all and checks that one more connection opens again (the refused slot came
//! back). Each attempt waits up to 2 s for the answer.
//! `probe: vsock-many ok opened=N refused=rst|timeout|none attempts=M reopen=ok|rst|timeout`
//! (`fail` when no connection opened).

use crate::serial::{put_str, ResultLine};
use crate::vsock_stream::{self, Params, State, MAX_CONNS};
use crate::zero_page::BootInfo;

pub const NAME: &str = "vsock-many";

fn refusal(state: State) -> &'static str {
    match state {
        State::Reset => "rst",
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
    let want = p.count.min(MAX_CONNS as u64 - 1);
    let (mut opened, mut attempts) = (0u64, 0u64);
    let mut refused = "none";
    while opened < want {
        attempts += 1;
        match s.connect_wait(p.port, p.deadline_ms(2000)) {
            Ok(_) => opened += 1,
            Err(state) => {
                refused = refusal(state);
                break;
            }
        }
    }
    for i in 0..MAX_CONNS {
        s.close(i);
    }
    s.vs.drain_tx();
    // The host answers each SHUTDOWN with an RST; let them arrive before the next attempt.
    let settle = p.deadline_ms(200);
    while !vsock_stream::passed(settle) {
        let _ = s.poll();
    }
    let reopen = match s.connect_wait(p.port, p.deadline_ms(2000)) {
        Ok(i) => {
            s.close(i);
            s.vs.drain_tx();
            "ok"
        }
        Err(state) => refusal(state),
    };
    let line = ResultLine::start(NAME.as_bytes(), opened > 0).dec("opened", opened);
    put_str(" refused=");
    put_str(refused);
    let line = line.dec("attempts", attempts);
    put_str(" reopen=");
    put_str(reopen);
    line.end();
}
