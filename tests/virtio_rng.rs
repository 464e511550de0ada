//! virtio-rng (`entropy`) under the real VMM and KVM, read by the probe guest's driver.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::{kvm_available, TestVm};

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn rng_gives_the_guest_4096_random_bytes() {
    if !kvm_available("rng_gives_the_guest_4096_random_bytes") {
        return;
    }
    let mut vm = TestVm::probe("rng", 1, 64);
    vm.config["entropy"] = json!({});
    let run = vm.run(TIMEOUT);
    run.assert_success();
    let detail = run.assert_probe_ok("rng");
    let distinct: u32 = detail
        .strip_prefix("bytes=4096 distinct=")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{detail}"))
        .parse()
        .unwrap();
    // 4096 uniform bytes miss a given value with probability (255/256)^4096 ~ 1e-7.
    assert!(distinct >= 250, "{detail}");
}

#[test]
fn a_throttled_entropy_device_delivers_everything_and_counts_the_waits() {
    if !kvm_available("a_throttled_entropy_device_delivers_everything_and_counts_the_waits") {
        return;
    }
    let mut vm = TestVm::probe("rng", 1, 64);
    vm.config["boot-source"]["boot_args"] =
        json!("console=ttyS0 probe.run=rng probe.rng_bytes=16384");
    // 4 KiB per 100 ms: the 4 requests of 4 KiB take at least 300 ms.
    vm.config["entropy"] =
        json!({"rate_limiter": {"bandwidth": {"size": 4096, "refill_time": 100}}});
    let metrics = vm.dir.path().join("metrics.json");
    vm.args
        .extend(["--metrics-path".into(), metrics.to_str().unwrap().into()]);
    let run = vm.run(TIMEOUT);
    run.assert_success();
    assert!(run.assert_probe_ok("rng").starts_with("bytes=16384 "));
    let mut totals = std::collections::BTreeMap::<String, u64>::new();
    for line in std::fs::read_to_string(&metrics).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        for (k, n) in v["entropy"].as_object().unwrap() {
            *totals.entry(k.clone()).or_insert(0) += n.as_u64().unwrap();
        }
    }
    assert_eq!(totals["entropy_bytes"], 16384, "{totals:?}");
    assert!(totals["entropy_rate_limiter_throttled"] >= 3, "{totals:?}");
    assert!(totals["rate_limiter_event_count"] >= 3, "{totals:?}");
}

#[test]
fn no_entropy_section_means_no_device() {
    if !kvm_available("no_entropy_section_means_no_device") {
        return;
    }
    let run = TestVm::probe("rng", 1, 64).run(TIMEOUT);
    run.assert_success();
    assert_eq!(run.probe_result("rng"), Some("fail no-virtio-rng-device"));
}
