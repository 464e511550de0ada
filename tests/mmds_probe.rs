//! MMDS seen from the probe guest, whose own minimal TCP client (resources/probe/src/
//! tcp_client.rs) speaks to 169.254.169.254:80 through virtio-net: the IP TTL of the answers
//! as the guest receives them (the hop limit), and a flood of connections far beyond the
//! responder's 8 sockets while the API keeps answering and the VMM's memory stays put. The
//! probe on a real tap in a network namespace the test creates (guest 10.0.0.2), MMDS V2 on
//! eth0 from the config file, the store from `--metadata`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use common::api::{wait_for_socket, ApiClient};
use common::netns::{net_totals, net_vm, TapNetns};
use common::TestVm;
use common::{kvm_available, rss_kib};

const TIMEOUT: Duration = Duration::from_secs(120);
/// The API must answer each request within this while the guest floods (a liveness bound,
/// not a figure).
const API_DEADLINE: Duration = Duration::from_secs(10);

/// A probe VM running `scenario` against the MMDS address, MMDS V2 on eth0 with a small
/// store.
fn mmds_vm(ns: &TapNetns, scenario: &str, params: &str) -> TestVm {
    let mut vm = net_vm(
        ns,
        scenario,
        &format!("probe.peer=169.254.169.254:80 {params}"),
        None,
    );
    vm.config["mmds-config"] = json!({"network_interfaces": ["eth0"]});
    let data = vm.dir.path().join("metadata.json");
    std::fs::write(
        &data,
        json!({"latest": {"meta-data": {"instance-id": "i-probe"}}}).to_string(),
    )
    .unwrap();
    vm.args
        .extend(["--metadata".into(), data.to_str().unwrap().into()]);
    vm
}

/// `key=value` of a result line's fields.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// A counter of the totals (0 when never written).
fn count(m: &BTreeMap<String, u64>, key: &str) -> u64 {
    m.get(key).copied().unwrap_or(0)
}

#[test]
fn mmds_answers_reach_the_guest_with_ip_ttl_1() {
    let test = "mmds_answers_reach_the_guest_with_ip_ttl_1";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let vm = mmds_vm(&ns, "mmds-get", "");
    let run = vm.run(TIMEOUT);
    run.assert_success();
    let line = run.assert_probe_ok("mmds-get");
    println!("{line}");
    // The SYN-ACK and every segment of both answers left the VMM with TTL 1.
    assert_eq!(field(&line, "syn_ack_ttl"), "1", "{line}");
    assert_eq!(field(&line, "min_ttl"), "1", "{line}");
    assert_eq!(field(&line, "max_ttl"), "1", "{line}");
    assert_eq!(field(&line, "token"), "200", "{line}");
    assert_eq!(field(&line, "get"), "200", "{line}");
    assert_eq!(field(&line, "end"), "fin", "{line}");
    assert_eq!(field(&line, "body"), "i-probe", "{line}");
    let m = net_totals(&vm);
    assert_eq!(count(&m, "mmds_other_drops"), 0, "{m:?}");
    // Nothing of the exchange reached the tap: only the probe's own ARP might.
    assert!(count(&m, "tx_packets_count") <= 2, "{m:?}");
}

#[test]
fn a_connection_flood_against_mmds_stays_bounded_and_the_api_keeps_answering() {
    let test = "a_connection_flood_against_mmds_stays_bounded_and_the_api_keeps_answering";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let mut vm = mmds_vm(&ns, "mmds-flood,idle", "probe.count=2000 probe.secs=13");
    let sock = vm.dir.path().join("api.sock");
    vm.args.retain(|a| a != "--no-api");
    vm.args
        .extend(["--api-sock".into(), sock.to_str().unwrap().into()]);
    let mut running = vm.spawn();
    let pid = running.child.id();
    running.wait_for_output("probe: mmds-flood held=8 extra=rst", TIMEOUT);
    wait_for_socket(&sock, TIMEOUT);
    let rss_before = rss_kib(pid);

    // GET / and PATCH /mmds through the flood and the held connections' deadline.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_api = stop.clone();
    let api_sock = sock.clone();
    let api = std::thread::spawn(move || {
        let mut api = ApiClient::connect(&api_sock);
        api.set_read_timeout(API_DEADLINE);
        let mut seen = Vec::new();
        let mut slowest = Duration::ZERO;
        let mut n = 0u64;
        while !stop_api.load(Ordering::Relaxed) {
            let start = Instant::now();
            seen.push(api.get("/").status);
            n += 1;
            let body = json!({"latest": {"meta-data": {"round": n}}});
            seen.push(api.patch("/mmds", body).status);
            slowest = slowest.max(start.elapsed());
            std::thread::sleep(Duration::from_millis(50));
        }
        (seen, slowest)
    });
    running.wait_for_output("probe: mmds-flood flood-done", TIMEOUT);
    let rss_flood = rss_kib(pid);
    // The VM idles after the scenario, so the VMM's memory can be read at the end.
    running.wait_for_output("probe: idle ok", TIMEOUT);
    stop.store(true, Ordering::Relaxed);
    let (statuses, slowest) = api.join().unwrap();
    let rss_after = rss_kib(pid);
    println!(
        "API: {} requests, slowest GET+PATCH {:.1} ms; VmRSS {rss_before} -> {rss_flood} -> {rss_after} KiB",
        statuses.len(),
        slowest.as_secs_f64() * 1000.0
    );
    assert!(statuses.len() >= 4, "{statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 204),
        "{statuses:?}"
    );
    // Sockets and buffers are allocated when the stack is made: 2,000 SYNs add nothing
    // (a generous bound; the frames in flight are at most 64 of 1,514 bytes).
    assert!(
        rss_after <= rss_before + 8 * 1024,
        "{rss_before} -> {rss_after} KiB"
    );

    let r = ApiClient::connect(&sock).put("/actions", json!({"action_type": "FlushMetrics"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let run = running.kill();
    let line = run.assert_probe_ok("mmds-flood");
    println!("{line}");
    assert_eq!(field(&line, "synack"), "0", "{line}");
    assert_eq!(field(&line, "held_dead"), "8", "{line}");
    // The VMM reset the idle held connections itself by smoltcp's 5 s timeout without input
    // (it ends idle connections too: see the unit test
    // an_idle_or_stalled_connection_is_reset_5_s_after_the_guests_last_segment), never before
    // 5 s after the guest's last segment (1% for the guest's TSC rate), checked at the next
    // poll (the 1 s maintenance timer), well before the 10 s deadline (no deadline abort).
    let held_rst_usecs: u64 = field(&line, "held_rst_usecs").parse().unwrap();
    assert!(
        (4_950_000..=8_000_000).contains(&held_rst_usecs),
        "held connections reset after {held_rst_usecs} us: {line}"
    );
    assert_eq!(field(&line, "after"), "200", "{line}");
    let rst: u64 = field(&line, "rst").parse().unwrap();
    assert!(rst > 0, "the excess SYNs are answered with RSTs: {line}");
    let m = net_totals(&vm);
    println!("{m:?}");
    // Every SYN was consumed by the responder, none reached the tap; the RSTs the guest saw
    // were made by it.
    assert!(count(&m, "mmds_frames_in") >= 2000 + 9, "{m:?}");
    assert!(count(&m, "mmds_frames_out") >= rst + 8, "{m:?}");
    assert_eq!(count(&m, "mmds_other_drops"), 0, "{m:?}");
    assert_eq!(count(&m, "mmds_deadline_aborts"), 0, "{m:?}");
    assert!(count(&m, "tx_packets_count") <= 2, "{m:?}");
}
