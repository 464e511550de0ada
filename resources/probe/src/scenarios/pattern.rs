//! `pattern`: fills all usable RAM with the pattern of `probe.seed=N` (a 64-bit number),
//! checks that every word holds it, prints `probe: pattern ok seed=N mib=M`, then halts so
//! the host can scan the VMM's memory. Tests run two guests with distinct seeds and check
//! that neither VMM's guest memory ever holds the other's pattern. Nothing after it runs.
//!
//! With `probe.recheck=1` on the command line it does not halt: it checks all of RAM again and
//! again, printing `probe: pattern recheck N ok` (or `fail` with the first bad address) after
//! each pass, so a snapshot taken between passes shows whether the restored memory still
//! holds the pattern.

use crate::cmdline;
use crate::e820::E820Map;
use crate::paging;
use crate::platform::halt_forever;
use crate::serial::{put_dec, put_str, ResultLine};
use crate::zero_page::BootInfo;

use super::mem::{check, fill, for_each_tested_range, pattern, tested_skip};

pub const NAME: &str = "pattern";

fn parse_seed(text: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for &b in text {
        let digit = u64::from(b.checked_sub(b'0').filter(|d| *d < 10)?);
        value = value.checked_mul(10)?.checked_add(digit)?;
    }
    (!text.is_empty()).then_some(value)
}

fn map_all(e820: &E820Map) -> bool {
    e820.usable()
        .all(|entry| paging::map_ram(e820, entry.addr, entry.end()).is_ok())
}

pub fn run(boot: &BootInfo) {
    let Some(seed) = cmdline::param(boot.cmdline(), b"probe.seed").and_then(parse_seed) else {
        ResultLine::fail(NAME.as_bytes()).text("needs probe.seed=N").end();
        return;
    };
    let e820 = &boot.e820;
    if !map_all(e820) {
        ResultLine::fail(NAME.as_bytes()).text("cannot map RAM").end();
        return;
    }
    let skip = tested_skip();
    let mut words = 0u64;
    for_each_tested_range(e820, &skip, |start, end| {
        fill(start, end, seed);
        words += (end - start) / 8;
    });
    let mut bad = None;
    for_each_tested_range(e820, &skip, |start, end| {
        if bad.is_none() {
            bad = check(start, end, seed);
        }
    });
    match bad {
        None => ResultLine::ok(NAME.as_bytes())
            .dec("seed", seed)
            .dec("words", words)
            .hex("first", pattern(skip[0].1, seed))
            .end(),
        Some((addr, found)) => ResultLine::fail(NAME.as_bytes())
            .dec("seed", seed)
            .hex("bad_addr", addr)
            .hex("found", found)
            .end(),
    }
    if cmdline::param(boot.cmdline(), b"probe.recheck").is_some() {
        recheck_forever(e820, seed);
    }
    halt_forever()
}

/// Checks all of RAM against the pattern, pass after pass, and reports each pass.
fn recheck_forever(e820: &E820Map, seed: u64) -> ! {
    let skip = tested_skip();
    let mut pass: u64 = 0;
    loop {
        pass += 1;
        let mut bad = None;
        for_each_tested_range(e820, &skip, |start, end| {
            if bad.is_none() {
                bad = check(start, end, seed);
            }
        });
        put_str("probe: pattern recheck ");
        put_dec(pass);
        match bad {
            None => put_str(" ok\n"),
            Some((addr, _)) => {
                put_str(" fail bad_addr=");
                put_dec(addr);
                put_str("\n");
            }
        }
    }
}
