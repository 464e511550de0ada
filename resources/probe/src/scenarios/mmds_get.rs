//! `mmds-get`: the V2 flow against the MMDS address (`probe.peer=169.254.169.254:80`): ARP,
//! `PUT /latest/api/token`, then `GET probe.path` (default `/latest/meta-data/instance-id`)
//! with the token, noting the IP TTL of the SYN-ACK and of every segment of the answers.
//! `probe: mmds-get ok syn_ack_ttl=T min_ttl=A max_ttl=B token=200 get=S end=fin|rst|timeout
//! body=BODY` (the body's first 64 printable bytes).

use crate::cmdline;
use crate::mmds_client::{self, server, Request};
use crate::netstack::{fail, Session};
use crate::serial::ResultLine;
use crate::tcp_client;
use crate::zero_page::BootInfo;

pub const NAME: &str = "mmds-get";

pub fn run(boot: &BootInfo) {
    let mut s = match Session::open(boot) {
        Ok(s) => s,
        Err(e) => return fail(NAME, e),
    };
    let path = cmdline::param(boot.cmdline(), b"probe.path").unwrap_or(b"/latest/meta-data/instance-id");
    let srv = server(&s);
    let mut r = Request::new();
    r.push(b"PUT /latest/api/token HTTP/1.1\r\n").header(b"X-metadata-token-ttl-seconds", b"60").push(b"\r\n");
    let (conn, put) = match tcp_client::request(&mut s, &srv, 41000, r.bytes(), 10_000_000) {
        Ok(x) => x,
        Err(e) => return fail(NAME, e.as_str()),
    };
    let body = put.body();
    let token = body.strip_suffix(b"\n").unwrap_or(body);
    let mut tok = [0u8; mmds_client::TOKEN_MAX];
    let n = token.len().min(tok.len());
    tok[..n].copy_from_slice(&token[..n]);
    let Some(got) = mmds_client::get(&mut s, 41001, path, &tok[..n]) else {
        return fail(NAME, "get-refused");
    };
    let ok = conn.syn_ack_ttl > 0 && put.status() == 200 && got.status() == 200;
    let body = got.body();
    let shown = body.iter().take(64).take_while(|c| c.is_ascii_graphic()).count();
    ResultLine::start(NAME.as_bytes(), ok)
        .dec("syn_ack_ttl", u64::from(conn.syn_ack_ttl))
        .dec("min_ttl", u64::from(put.min_ttl.min(got.min_ttl)))
        .dec("max_ttl", u64::from(put.max_ttl.max(got.max_ttl)))
        .dec("token", u64::from(put.status()))
        .dec("get", u64::from(got.status()))
        .word("end", got.end.as_str().as_bytes())
        .word("body", &body[..shown])
        .end();
}
