//! `net-flood`: `probe.count` TCP SYNs and `probe.count` UDP datagrams, each to a distinct
//! port of the peer (from `probe.port` upwards, wrapping). `probe: net-flood ok sent=N`.

use crate::netstack::{eth, fail, tcp_syn, Session, ETH_IPV4};
use crate::serial::ResultLine;
use crate::zero_page::BootInfo;

pub const NAME: &str = "net-flood";

pub fn run(boot: &BootInfo) {
    let mut s = match Session::open(boot) {
        Ok(s) => s,
        Err(e) => return fail(NAME, e),
    };
    let (mac, peer_mac, ip, peer) = (s.net.mac, s.peer_mac, s.params.ip, s.params.peer);
    let base = u64::from(s.params.port.max(1024));
    let port = |i: u64| (1024 + (base - 1024 + i) % (65536 - 1024)) as u16;
    let mut sent = 0u64;
    for i in 0..s.params.count {
        let buf = s.net.tx_buffer();
        eth(buf, peer_mac, mac, ETH_IPV4);
        let len = tcp_syn(buf, (ip, 30000 + (i % 1000) as u16), (peer, port(i)), i as u32);
        s.net.send(len);
        s.send_udp_to((peer, port(i)), 30000, b"flood");
        sent += 2;
    }
    s.net.drain_tx();
    ResultLine::ok(NAME.as_bytes()).dec("sent", sent).end();
}
