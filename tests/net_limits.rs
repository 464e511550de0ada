//! virtio-net under load: a guest flood against a small connection table stays bounded, and a
//! TX rate limit holds for a guest sending as fast as it can. The probe guest on a real tap in
//! a network namespace the test creates.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use serde_json::json;

use common::kvm_available;
use common::netns::{net_totals, net_vm, TapNetns};

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn a_flood_against_a_small_conntrack_table_stays_bounded() {
    let test = "a_flood_against_a_small_conntrack_table_stays_bounded";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let fw = json!({"allowed_ips": ["10.0.0.2/32"], "conntrack_max": 1000});
    let vm = net_vm(
        &ns,
        "net-flood",
        "probe.peer=10.0.0.1:9 probe.count=2000 probe.port=2000",
        Some(fw),
    );
    let run = vm.run(TIMEOUT);
    run.assert_success();
    assert_eq!(run.assert_probe_ok("net-flood"), "sent=4000");
    let m = net_totals(&vm);
    // 4,000 new flows, at most 1,000 tracked at once (none expires within the run).
    assert!(m["fw_conntrack_full"] >= 3000, "{m:?}");
    assert!(
        m["tx_packets_count"] <= 1001 + 1,
        "ARP plus at most 1,000 flows: {m:?}"
    );
}

#[test]
fn a_tx_rate_limit_holds_within_15_percent() {
    let test = "a_tx_rate_limit_holds_within_15_percent";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let mut vm = net_vm(
        &ns,
        "net-tx",
        "probe.peer=10.0.0.1:9 probe.count=2000 probe.size=1000",
        None,
    );
    // 10 Mbit/s: 125,000 bytes per 100 ms.
    vm.config["network-interfaces"][0]["tx_rate_limiter"] =
        json!({"bandwidth": {"size": 125000, "refill_time": 100}});
    let run = vm.run(TIMEOUT);
    run.assert_success();
    let detail = run.assert_probe_ok("net-tx");
    let usecs: f64 = detail.split("usecs=").nth(1).unwrap().parse().unwrap();
    // Frames of 1,042 bytes (UDP 1,000 + 8 + IPv4 20 + Ethernet 14); the first bucket is free.
    let bytes = 2000.0 * 1042.0;
    let expected_us = (bytes - 125_000.0 + 42.0) / 1.25;
    let ratio = usecs / expected_us;
    assert!(
        (0.85..=1.15).contains(&ratio),
        "{detail}: {ratio:.3} of {expected_us:.0} us"
    );
    let m = net_totals(&vm);
    assert!(m["tx_rate_limiter_throttled"] > 0, "{m:?}");
}
