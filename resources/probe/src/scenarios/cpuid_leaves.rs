//! `cpuid_leaves`: the CPUID the guest sees at CPL0 for the leaves CPU templates change (1,
//! 7.0, 0xD.0, 0xD.1, 0x8000_0001, 0x8000_0008), one line with every register, so a test can
//! check the bits a template sets and clears. A leaf above the maximum is reported as absent.
//! `cpuid_ticker` prints the same line again and again (`tick=N` first), forever, so a test
//! can read the CPUID of a guest restored from a snapshot.

use crate::cpuid::cpuid;
use crate::serial::ResultLine;
use crate::zero_page::BootInfo;

pub const NAME: &str = "cpuid_leaves";

/// (keys of EAX..EDX, leaf, sub-leaf): `1.0.eax=0x...`.
const LEAVES: &[([&str; 4], u32, u32)] = &[
    (["1.0.eax", "1.0.ebx", "1.0.ecx", "1.0.edx"], 0x1, 0),
    (["7.0.eax", "7.0.ebx", "7.0.ecx", "7.0.edx"], 0x7, 0),
    (["d.0.eax", "d.0.ebx", "d.0.ecx", "d.0.edx"], 0xd, 0),
    (["d.1.eax", "d.1.ebx", "d.1.ecx", "d.1.edx"], 0xd, 1),
    (["80000001.0.eax", "80000001.0.ebx", "80000001.0.ecx", "80000001.0.edx"], 0x8000_0001, 0),
    (["80000008.0.eax", "80000008.0.ebx", "80000008.0.ecx", "80000008.0.edx"], 0x8000_0008, 0),
];

pub const TICKER: &str = "cpuid_ticker";

/// Busy-loop iterations between two lines of `cpuid_ticker`.
const SPIN_PER_TICK: u64 = 20_000_000;

pub fn run(_boot: &BootInfo) {
    leaves(ResultLine::ok(NAME.as_bytes())).end();
}

pub fn run_ticker(_boot: &BootInfo) {
    let mut tick = 0u64;
    loop {
        let mut spin = 0u64;
        while spin < SPIN_PER_TICK {
            // SAFETY: a volatile read of a local keeps the loop from being optimised away.
            spin = unsafe { core::ptr::read_volatile(&spin) } + 1;
        }
        tick += 1;
        leaves(ResultLine::ok(TICKER.as_bytes()).dec("tick", tick)).end();
    }
}

fn leaves(line: ResultLine) -> ResultLine {
    let max_basic = cpuid(0, 0).eax;
    let max_extended = cpuid(0x8000_0000, 0).eax;
    let mut line = line
        .hex("max", u64::from(max_basic))
        .hex("maxe", u64::from(max_extended));
    for &(keys, leaf, subleaf) in LEAVES {
        let max = if leaf >= 0x8000_0000 { max_extended } else { max_basic };
        if leaf > max {
            line = line.word(keys[0], b"absent");
            continue;
        }
        let r = cpuid(leaf, subleaf);
        line = line
            .hex(keys[0], u64::from(r.eax))
            .hex(keys[1], u64::from(r.ebx))
            .hex(keys[2], u64::from(r.ecx))
            .hex(keys[3], u64::from(r.edx));
    }
    line
}
