//! MMDS end to end with the Linux test guest's own TCP/IP stack: one boot on a real tap in a
//! network namespace the test creates (guest 10.0.0.2, default route via 10.0.0.1), MMDS V2
//! on eth0, the store filled through the API before boot and patched after. In the guest,
//! busybox `nc` (run through the agent over vsock) speaks HTTP to 169.254.169.254:80: busybox
//! `wget` cannot send PUT, which the V2 token needs. Slow on hosts without VMX/SVM (one boot,
//! ~15-25 s to the agent).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use common::agent::{exec, sh, wait_for_agent};
use common::linux::boot_source;
use common::netns::{TapNetns, GUEST_MAC};
use common::{kvm_available, ApiVm};

const TIMEOUT: Duration = Duration::from_secs(600);

/// One HTTP request from the guest to the MMDS address through busybox nc; the whole
/// response (the service closes after it).
fn guest_http(uds: &Path, request_lines: &[&str]) -> String {
    let mut request = String::new();
    for line in request_lines {
        request.push_str(line);
        request.push_str("\\r\\n");
    }
    request.push_str("\\r\\n");
    sh(
        uds,
        &format!("printf '{request}' | nc -w 5 169.254.169.254 80"),
    )
}

fn status_of(response: &str) -> u16 {
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

fn body_of(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body: {response:?}"))
        .1
}

/// The `net_eth0` counters summed over the metrics file's lines.
fn net_eth0_totals(path: &Path) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        for (k, n) in v["net_eth0"].as_object().into_iter().flatten() {
            *totals.entry(k.clone()).or_insert(0) += n.as_u64().unwrap_or(0);
        }
    }
    totals
}

/// Token PUT, then GET with the token, as a guest does.
fn guest_get_with_token(uds: &Path, path: &str) -> String {
    let token = guest_http(
        uds,
        &[
            "PUT /latest/api/token HTTP/1.1",
            "Host: 169.254.169.254",
            "X-metadata-token-ttl-seconds: 60",
        ],
    );
    assert_eq!(status_of(&token), 200, "{token}");
    let token = body_of(&token).trim().to_string();
    assert!(!token.is_empty() && !token.contains('\''), "{token:?}");
    guest_http(
        uds,
        &[
            &format!("GET {path} HTTP/1.1"),
            "Host: 169.254.169.254",
            "Accept: application/json",
            &format!("X-metadata-token: {token}"),
        ],
    )
}

#[test]
fn linux_guest_reads_mmds_with_a_v2_token_is_refused_without_and_sees_a_patch_after_boot() {
    let test =
        "linux_guest_reads_mmds_with_a_v2_token_is_refused_without_and_sees_a_patch_after_boot";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Short: uds_path has at most 96 bytes.
    let uds = dir.path().join("v.sock");
    let metrics = dir.path().join("metrics.json");
    let vm = ApiVm::start_in_netns(
        dir,
        Some(&ns.name),
        &["--metrics-path", metrics.to_str().unwrap()],
    );
    let mut c = vm.client();
    for (path, body) in [
        (
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 128}),
        ),
        (
            "/boot-source",
            boot_source("palisade.ip=10.0.0.2/24 palisade.gw=10.0.0.1"),
        ),
        (
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": GUEST_MAC}),
        ),
        ("/vsock", json!({"guest_cid": 3, "uds_path": uds})),
        ("/mmds/config", json!({"network_interfaces": ["eth0"]})),
        (
            "/mmds",
            json!({"latest": {"meta-data": {"instance-id": "i-palisade", "zone": "z1"}}}),
        ),
    ] {
        let r = c.put(path, body);
        assert_eq!(r.status, 204, "PUT {path}: {}", r.body);
    }
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let mut running = vm.running;
    running.wait_for_output("palisade-net: eth0 up", TIMEOUT);
    wait_for_agent(&uds, TIMEOUT);

    // V2: without a token, 401.
    let refused = guest_http(
        &uds,
        &["GET /latest/meta-data HTTP/1.1", "Host: 169.254.169.254"],
    );
    assert_eq!(status_of(&refused), 401, "{refused}");

    // With one, the stored JSON.
    let got = guest_get_with_token(&uds, "/latest/meta-data");
    assert_eq!(status_of(&got), 200, "{got}");
    let body: Value = serde_json::from_str(body_of(&got)).unwrap();
    assert_eq!(body, json!({"instance-id": "i-palisade", "zone": "z1"}));

    // A PATCH through the API after boot is what the guest reads next.
    let r = c.patch(
        "/mmds",
        json!({"latest": {"meta-data": {"instance-id": "i-patched", "zone": null}}}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let got = guest_get_with_token(&uds, "/latest/meta-data");
    assert_eq!(status_of(&got), 200, "{got}");
    let body: Value = serde_json::from_str(body_of(&got)).unwrap();
    assert_eq!(body, json!({"instance-id": "i-patched"}));

    // Anything else to the MMDS address is dropped on the interface, never sent to the tap.
    let ping = exec(
        &uds,
        &["busybox", "ping", "-c", "1", "-W", "2", "169.254.169.254"],
    )
    .unwrap();
    assert_ne!(ping.code, 0, "{ping:?}");
    let r = c.put("/actions", json!({"action_type": "FlushMetrics"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let m = net_eth0_totals(&metrics);
    println!("{m:?}");
    assert!(m["mmds_frames_in"] >= 6, "{m:?}");
    assert!(m["mmds_frames_out"] >= 6, "{m:?}");
    assert!(m["mmds_other_drops"] >= 1, "{m:?}");

    let run = running.kill();
    println!("VMM ran {:.1} s", run.elapsed.as_secs_f64());
}
