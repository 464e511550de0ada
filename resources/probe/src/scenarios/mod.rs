//! The scenarios `probe.run=` can name. To add one: a file with `pub fn run(boot: &BootInfo)`
//! that prints its `probe: NAME ok|fail ...` lines, and a row in `SCENARIOS`.

mod balloon;
mod balloon_flood;
mod balloon_hint;
mod balloon_report;
mod balloon_snap;
mod balloon_stats;
mod blk;
mod blk_bench;
mod blk_flood;
mod blk_hostile;
mod blk_watch;
mod chain_hostile;
mod console_flood;
mod cpuid_leaves;
mod cpus;
mod dirty;
mod genid;
mod hello;
mod idle;
mod kbd;
mod mem;
mod mmds_bench;
mod mmds_flood;
mod mmds_get;
mod mmds_hostile;
mod mmds_hostile_raw;
mod mrg_hostile;
mod net_echo;
mod net_flood;
mod net_forge;
mod net_hostile;
mod net_rx;
mod net_spoof;
mod net_tx;
mod rng;
mod pattern;
mod ticker;
mod triple_fault;
mod unknown_io;
mod virtio_hostile;
mod virtio_list;
mod vsock_bench;
mod vsock_connect;
mod vsock_echo;
mod vsock_hostile;
mod vsock_many;
mod vsock_stall;

use crate::serial::ResultLine;
use crate::zero_page::BootInfo;

struct Scenario {
    name: &'static str,
    run: fn(&BootInfo),
}

const SCENARIOS: &[Scenario] = &[
    Scenario { name: hello::NAME, run: hello::run },
    Scenario { name: mem::NAME, run: mem::run },
    Scenario { name: cpus::NAME, run: cpus::run },
    Scenario { name: cpuid_leaves::NAME, run: cpuid_leaves::run },
    Scenario { name: cpuid_leaves::TICKER, run: cpuid_leaves::run_ticker },
    Scenario { name: idle::NAME, run: idle::run },
    Scenario { name: unknown_io::NAME, run: unknown_io::run },
    Scenario { name: triple_fault::NAME, run: triple_fault::run },
    Scenario { name: ticker::NAME, run: ticker::run },
    Scenario { name: console_flood::NAME, run: console_flood::run },
    Scenario { name: kbd::NAME, run: kbd::run },
    Scenario { name: pattern::NAME, run: pattern::run },
    Scenario { name: dirty::NAME, run: dirty::run },
    Scenario { name: virtio_list::NAME, run: virtio_list::run },
    Scenario { name: blk::NAME, run: blk::run },
    Scenario { name: blk_bench::NAME, run: blk_bench::run },
    Scenario { name: blk_bench::iops::NAME, run: blk_bench::iops::run },
    Scenario { name: blk_hostile::NAME, run: blk_hostile::run },
    Scenario { name: blk_flood::NAME, run: blk_flood::run },
    Scenario { name: blk_watch::NAME, run: blk_watch::run },
    Scenario { name: rng::NAME, run: rng::run },
    Scenario { name: balloon::NAME, run: balloon::run },
    Scenario { name: balloon_flood::NAME, run: balloon_flood::run },
    Scenario { name: balloon_hint::NAME, run: balloon_hint::run },
    Scenario { name: balloon_report::NAME, run: balloon_report::run },
    Scenario { name: balloon_snap::NAME, run: balloon_snap::run },
    Scenario { name: balloon_stats::NAME, run: balloon_stats::run },
    Scenario { name: genid::NAME, run: genid::run },
    Scenario { name: net_tx::NAME, run: net_tx::run },
    Scenario { name: net_rx::NAME, run: net_rx::run },
    Scenario { name: net_echo::NAME, run: net_echo::run },
    Scenario { name: net_spoof::NAME, run: net_spoof::run },
    Scenario { name: net_flood::NAME, run: net_flood::run },
    Scenario { name: net_forge::NAME, run: net_forge::run },
    Scenario { name: net_hostile::NAME, run: net_hostile::run },
    Scenario { name: virtio_hostile::NAME, run: virtio_hostile::run },
    Scenario { name: chain_hostile::NAME, run: chain_hostile::run },
    Scenario { name: mrg_hostile::NAME, run: mrg_hostile::run },
    Scenario { name: mmds_get::NAME, run: mmds_get::run },
    Scenario { name: mmds_flood::NAME, run: mmds_flood::run },
    Scenario { name: mmds_bench::NAME, run: mmds_bench::run },
    Scenario { name: mmds_hostile::NAME, run: mmds_hostile::run },
    Scenario { name: vsock_echo::NAME, run: vsock_echo::run },
    Scenario { name: vsock_connect::NAME, run: vsock_connect::run },
    Scenario { name: vsock_many::NAME, run: vsock_many::run },
    Scenario { name: vsock_hostile::NAME, run: vsock_hostile::run },
    Scenario { name: vsock_bench::NAME, run: vsock_bench::run },
    Scenario { name: vsock_stall::NAME, run: vsock_stall::run },
];

pub fn run(name: &[u8], boot: &BootInfo) {
    match SCENARIOS.iter().find(|scenario| scenario.name.as_bytes() == name) {
        Some(scenario) => (scenario.run)(boot),
        None => ResultLine::fail(name).text("unknown scenario").end(),
    }
}
