//! `mmds-bench`: request latency of the MMDS responder as the guest sees it
//! (`probe.peer=169.254.169.254:80`), timed with the TSC (`probe.tsc_mhz`): `probe.count`
//! (default 50, at most 1000) token PUTs, then as many `GET /latest/meta-data/instance-id`
//! with a token, each a whole connection (SYN to the ACK of our FIN) from a port of its own,
//! one after the other. Answers other than 200 are counted as errors (a request rate limit
//! would show there).
//! `probe: mmds-bench ok n=N put_median_us=A put_p99_us=B get_median_us=C get_p99_us=D
//! errors=E`.

use crate::mmds_client::{self, Request};
use crate::netstack::{fail, Session};
use crate::serial::ResultLine;
use crate::virtio::tsc;
use crate::zero_page::BootInfo;

pub const NAME: &str = "mmds-bench";
const MAX: usize = 1000;

/// Median and 99th percentile (nearest rank) of `v`, sorted in place.
fn median_p99(v: &mut [u64]) -> (u64, u64) {
    if v.is_empty() {
        return (0, 0);
    }
    v.sort_unstable();
    let p99 = (v.len() * 99).div_ceil(100).max(1) - 1;
    (v[(v.len() - 1) / 2], v[p99])
}

pub fn run(boot: &BootInfo) {
    let mut s = match Session::open(boot) {
        Ok(s) => s,
        Err(e) => return fail(NAME, e),
    };
    let n = (s.params.count as usize).clamp(1, MAX);
    let mut put_us = [0u64; MAX];
    let mut get_us = [0u64; MAX];
    let mut errors = 0u64;
    let mut port = 43000u16;
    let mut tok = [0u8; mmds_client::TOKEN_MAX];
    let mut tok_len = 0;
    for slot in put_us.iter_mut().take(n) {
        port += 1;
        let start = tsc();
        let t = mmds_client::token(&mut s, port, b"600");
        *slot = s.params.usecs_since(start);
        if t.status == 200 {
            tok_len = t.as_bytes().len();
            tok[..tok_len].copy_from_slice(t.as_bytes());
        } else {
            errors += 1;
        }
    }
    let mut r = Request::new();
    r.push(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n").header(b"X-metadata-token", &tok[..tok_len]).push(b"\r\n");
    for slot in get_us.iter_mut().take(n) {
        port += 1;
        let start = tsc();
        let x = mmds_client::ask(&mut s, port, r.bytes());
        *slot = s.params.usecs_since(start);
        if x.map_or(0, |x| x.status()) != 200 {
            errors += 1;
        }
    }
    let (put_median, put_p99) = median_p99(&mut put_us[..n]);
    let (get_median, get_p99) = median_p99(&mut get_us[..n]);
    ResultLine::start(NAME.as_bytes(), errors == 0)
        .dec("n", n as u64)
        .dec("put_median_us", put_median)
        .dec("put_p99_us", put_p99)
        .dec("get_median_us", get_median)
        .dec("get_p99_us", get_p99)
        .dec("errors", errors)
        .end();
}
