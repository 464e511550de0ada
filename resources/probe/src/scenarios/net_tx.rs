//! `net-tx`: `probe.count` UDP datagrams of `probe.size` payload bytes to the peer, as fast as
//! the TX queue takes them. `probe: net-tx ok sent=N usecs=T`.

use crate::netstack::{fail, Session};
use crate::serial::ResultLine;
use crate::virtio::tsc;
use crate::zero_page::BootInfo;

pub const NAME: &str = "net-tx";

pub fn run(boot: &BootInfo) {
    let mut s = match Session::open(boot) {
        Ok(s) => s,
        Err(e) => return fail(NAME, e),
    };
    let payload = [0x5au8; crate::netstack::MAX_PAYLOAD];
    let size = s.params.size;
    let dst = (s.params.peer, s.params.peer_port);
    let start = tsc();
    for _ in 0..s.params.count {
        s.send_udp_to(dst, 40000, &payload[..size]);
    }
    s.net.drain_tx();
    let usecs = s.params.usecs_since(start);
    ResultLine::ok(NAME.as_bytes()).dec("sent", s.params.count).dec("usecs", usecs).end();
}
