//! The hostile suite (issue 11): attacks from inside the probe guest on the devices of a
//! running Palisade while the host measures the API's latency, the VMM's memory and its
//! metrics. Every attack adds a row to a table (see hostile/table.rs);
//! `bash resources/hostile.sh` runs this file and prints the table. The network attacks from
//! the guest beyond the TX header tricks below live in hostile/net_forge.rs (forged sources,
//! rogue DHCP and RA, link control aimed off the link) and hostile/net_flood.rs (SYN and UDP
//! floods against a small connection table, with a second guest as bystander). The balloon flood
//! (huge inflate requests) is hostile/balloon.rs. The malformed
//! chains of blk-hostile, sent to virtio-rng and to both virtio-net queues, are hostile/chains.rs.
//! The vsock attacks (bad packets, a guest that stops reading, the connection cap, stuck host
//! clients) are hostile/vsock.rs. Hostile snapshot state files (sealed again without a key,
//! one field changed per case, each loaded into a fresh VMM) are hostile/snapshot.rs. The
//! attacks on the metadata service (MMDS) from its guest are hostile/mmds.rs. Mergeable RX
//! buffers against bad buffers are hostile/net_mergeable.rs.
//!
//! Latency: the target is `GET /` under 100 ms throughout an attack, and the table reports
//! the measured maximum against it. The tests assert 5 s: what they guard against is the
//! stall of minutes that hole 4 allowed (96 s), and a CI machine may be busy enough that a
//! second process waits a second or more for a core (seen: 1.4 s at a load of 5 on 2 cores).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

#[path = "hostile/balloon.rs"]
mod balloon;
#[path = "hostile/capture.rs"]
mod capture;
#[path = "hostile/chains.rs"]
mod chains;
mod common;
#[path = "hostile/host.rs"]
mod host;
#[path = "hostile/mmds.rs"]
mod mmds;
#[path = "hostile/net_flood.rs"]
mod net_flood;
#[path = "hostile/net_forge.rs"]
mod net_forge;
#[path = "hostile/net_mergeable.rs"]
mod net_mergeable;
#[path = "hostile/snapshot.rs"]
mod snapshot;
#[path = "hostile/snapshot_balloon.rs"]
mod snapshot_balloon;
#[path = "hostile/table.rs"]
mod table;
#[path = "hostile/vsock.rs"]
mod vsock;

use std::time::Duration;

use serde_json::{json, Value};

use common::netns::{tsc_mhz, TapNetns, GUEST_MAC};
use common::rss_kib;
use common::{api, metric_totals, RunningVm, TestVm};
use host::{can_attack, ApiWatch, Latency};
use table::Table;

/// How long a scenario may take to finish: a liveness deadline, not a figure. The
/// virtio-hostile storms alone are 600,000 MMIO exits (55-80 s at load 5 on a host whose KVM
/// emulates the guest's kernel mode; they ran past 90 s when CI, the hostile suite and a build
/// shared two cores).
const TIMEOUT: Duration = Duration::from_secs(300);
/// What the tests assert for `GET /` (the target is 100 ms; CI machines are loaded).
const LATENCY_BOUND: Duration = Duration::from_secs(5);
const LATENCY_TARGET_MS: f64 = 100.0;
/// Most the VMM's resident memory may grow during one attack.
const RSS_GROWTH_KIB: u64 = 64 * 1024;

/// A probe VM running `scenarios` with `params`, serving the API on DIR/api.sock and writing
/// metrics to DIR/metrics.json.
fn api_probe(scenarios: &str, params: &str) -> TestVm {
    let mut vm = TestVm::probe(scenarios, 1, 64);
    vm.config["boot-source"]["boot_args"] = json!(format!(
        "console=ttyS0 probe.run={scenarios} probe.tsc_mhz={} {params}",
        tsc_mhz()
    ));
    let dir = vm.dir.path();
    vm.args = vec![
        "--api-sock".into(),
        dir.join("api.sock").to_str().unwrap().into(),
        "--metrics-path".into(),
        dir.join("metrics.json").to_str().unwrap().into(),
        "--boot-timer".into(),
    ];
    vm
}

/// A sparse disk of `mib` MiB of zeros, as the drive `data`.
fn zero_disk(vm: &mut TestVm, mib: u64) -> std::path::PathBuf {
    let path = vm.dir.path().join("data.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    vm.config["drives"] = json!([{"drive_id": "data", "path_on_host": path,
        "is_root_device": false, "is_read_only": false}]);
    path
}

fn spawn_with_api(vm: &TestVm) -> RunningVm {
    let running = vm.spawn();
    api::wait_for_socket(&vm.dir.path().join("api.sock"), Duration::from_secs(10));
    running
}

/// `PUT /actions FlushMetrics`: its status.
fn flush_metrics(vm: &TestVm) -> u16 {
    let mut c = api::ApiClient::connect(vm.dir.path().join("api.sock"));
    c.put("/actions", json!({"action_type": "FlushMetrics"}))
        .status
}

/// The value of `key=` in a result detail.
fn field(detail: &str, key: &str) -> u64 {
    detail
        .split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key}= in {detail:?}"))
}

fn latency_row(table: &mut Table, attack: &str, seen: Latency) {
    let pass = seen.failures == 0 && seen.max < LATENCY_BOUND;
    let note = if seen.max_ms() < LATENCY_TARGET_MS {
        ""
    } else {
        " (over the 100 ms target)"
    };
    table.record(
        attack,
        "GET / < 100 ms (asserted < 5 s), all 200",
        &format!(
            "max {:.1} ms over {} polls, {} failed{note}",
            seen.max_ms(),
            seen.polls,
            seen.failures
        ),
        pass,
    );
}

#[test]
fn blk_flood_of_one_head_256_times_is_bounded_and_the_vmm_and_a_second_guest_stay_responsive() {
    let test =
        "blk_flood_of_one_head_256_times_is_bounded_and_the_vmm_and_a_second_guest_stay_responsive";
    if !can_attack(test) {
        return;
    }
    let mut table = Table::default();
    // The bystander: a second guest whose API latency is measured before and during.
    let mut other = api_probe("blk,idle", "");
    zero_disk(&mut other, 1);
    let mut other_vm = spawn_with_api(&other);
    other_vm.wait_for_output("probe: blk ok", TIMEOUT);
    let watch = ApiWatch::start(other.dir.path().join("api.sock"));
    let mut warm = api::ApiClient::connect(other.dir.path().join("api.sock"));
    for _ in 0..50 {
        assert_eq!(warm.get("/").status, 200);
    }
    let baseline = watch.stop();

    // `idle` after the flood keeps the VMM up for the measurements after it.
    let mut vm = api_probe("blk-flood,idle", "probe.secs=6");
    let disk = zero_disk(&mut vm, 64);
    let mut running = spawn_with_api(&vm);
    running.wait_for_output("probe: blk-flood flood-start", TIMEOUT);
    let pid = running.child.id();
    let rss_before = rss_kib(pid);
    let watch = ApiWatch::start(vm.dir.path().join("api.sock"));
    let other_watch = ApiWatch::start(other.dir.path().join("api.sock"));
    running.wait_for_output("probe: blk-flood flood-done", TIMEOUT);
    let during = watch.stop();
    let other_during = other_watch.stop();
    let rss_after = rss_kib(pid);
    running.wait_for_output("probe: idle ok", TIMEOUT);
    let flushed = flush_metrics(&vm);
    let run = running.kill();
    drop(other_vm);

    let detail = run
        .probe_result("blk-flood")
        .unwrap_or("no result")
        .to_string();
    let ok = detail.starts_with("ok ");
    let (max_answered, max_ok) = if ok {
        (field(&detail, "max_answered"), field(&detail, "max_ok"))
    } else {
        (0, 0)
    };
    let (over_answered, over_ioerr) = if ok {
        (
            field(&detail, "over_answered"),
            field(&detail, "over_ioerr"),
        )
    } else {
        (0, 0)
    };
    table.record(
        "blk-flood: head 0 x256, 254 x size_max T_IN (the advertised maximum)",
        "every request answered S_OK",
        &format!("answered={max_answered} ok={max_ok}"),
        ok && max_answered > 0 && max_ok == max_answered,
    );
    let untouched = std::fs::read(&disk).unwrap().iter().all(|&b| b == 0);
    table.record(
        "blk-flood: head 0 x256, 254 x 2 size_max T_OUT (twice the maximum)",
        "every request S_IOERR, disk unchanged",
        &format!("answered={over_answered} ioerr={over_ioerr} disk_unchanged={untouched}"),
        ok && over_answered > 0 && over_ioerr == over_answered && untouched,
    );
    table.record(
        "blk-flood: the VMM process",
        "still serving after the flood (FlushMetrics answers 204)",
        &format!("FlushMetrics -> {flushed}"),
        flushed == 204,
    );
    latency_row(
        &mut table,
        "blk-flood: API GET / of the flooded VMM",
        during,
    );
    table.record(
        "blk-flood: a second guest's API GET /",
        "< 100 ms (asserted < 5 s) during the flood",
        &format!(
            "before max {:.1} ms, during max {:.1} ms over {} polls",
            baseline.max_ms(),
            other_during.max_ms(),
            other_during.polls
        ),
        other_during.failures == 0 && other_during.max < LATENCY_BOUND,
    );
    table.record(
        "blk-flood: VMM VmRSS",
        "grows < 64 MiB",
        &format!("before {rss_before} KiB, after {rss_after} KiB"),
        rss_after < rss_before + RSS_GROWTH_KIB,
    );
    let m = metric_totals(vm.dir.path(), "block_data");
    let counted = m.get("read_count") == Some(&max_answered)
        && m.get("execute_fails") == Some(&over_answered)
        && m.get("write_bytes") == Some(&0)
        && m.get("needs_reset_count") == Some(&0);
    table.record(
        "blk-flood: metrics block_data",
        "read_count = answered reads, execute_fails = refused writes, no writes",
        &format!(
            "read_count={:?} execute_fails={:?} write_bytes={:?} needs_reset={:?}",
            m.get("read_count"),
            m.get("execute_fails"),
            m.get("write_bytes"),
            m.get("needs_reset_count")
        ),
        counted,
    );
    if !ok {
        println!(
            "--- probe stdout\n{}\n--- stderr\n{}",
            run.stdout, run.stderr
        );
    }
    table.finish();
}

/// A probe VM with one drive, one network interface on `ns`'s tap0 and the entropy device.
fn three_device_probe(ns: &TapNetns, scenarios: &str, params: &str, fw: Value) -> TestVm {
    let mut vm = api_probe(
        scenarios,
        &format!("probe.ip=10.0.0.2/24 probe.peer=10.0.0.1:7000 {params}"),
    );
    zero_disk(&mut vm, 1);
    vm.config["network-interfaces"] = json!([{"iface_id": "eth0", "host_dev_name": "tap0",
        "guest_mac": GUEST_MAC, "firewall": fw}]);
    vm.config["entropy"] = json!({});
    vm.netns = Some(ns.name.clone());
    vm
}

/// Runs `scenario` (then `idle`) with the API watched and the VMM's memory read before and
/// after; records the latency and memory rows and returns the run (after FlushMetrics).
fn watched_run(table: &mut Table, vm: &TestVm, scenario: &str) -> common::GuestRun {
    let mut running = spawn_with_api(vm);
    running.wait_for_output("probe: ready", TIMEOUT);
    let pid = running.child.id();
    let rss_before = rss_kib(pid);
    let watch = ApiWatch::start(vm.dir.path().join("api.sock"));
    running.wait_for_output("probe: idle ok", TIMEOUT);
    let seen = watch.stop();
    let rss_after = rss_kib(pid);
    let flushed = flush_metrics(vm);
    let run = running.kill();
    latency_row(table, &format!("{scenario}: API GET /"), seen);
    table.record(
        &format!("{scenario}: VMM VmRSS"),
        "grows < 64 MiB, still serving",
        &format!("before {rss_before} KiB, after {rss_after} KiB, FlushMetrics -> {flushed}"),
        rss_after < rss_before + RSS_GROWTH_KIB && flushed == 204,
    );
    run
}

#[test]
fn transport_abuse_of_blk_net_and_rng_is_refused_or_harmless() {
    let test = "transport_abuse_of_blk_net_and_rng_is_refused_or_harmless";
    if !can_attack(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return; // skipped (a failure under PALISADE_NO_SKIP, as in CI)
    };
    let mut table = Table::default();
    let vm = three_device_probe(
        &ns,
        "virtio-hostile,idle",
        "",
        json!({"allowed_ips": ["10.0.0.2/32"]}),
    );
    let run = watched_run(&mut table, &vm, "virtio-hostile");
    let mut cases = 0;
    for line in run.stdout.lines() {
        let Some(rest) = line.strip_prefix("probe: virtio-hostile case ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (dev, case, verdict, saw) = (
            words.next().unwrap_or("?"),
            words.next().unwrap_or("?"),
            words.next().unwrap_or("?"),
            words.next().unwrap_or("?"),
        );
        let expected = if case.starts_with("features-ok") || case.starts_with("driver-ok") {
            "bit refused, works after re-init"
        } else {
            "device keeps working"
        };
        table.record(
            &format!("virtio-hostile: {dev} {case}"),
            expected,
            saw,
            verdict == "pass",
        );
        cases += 1;
    }
    table.record(
        "virtio-hostile: every device attacked",
        "27 cases (9 per device), probe ok",
        &format!(
            "{cases} cases, probe {:?}",
            run.probe_result("virtio-hostile")
        ),
        cases == 27
            && run
                .probe_result("virtio-hostile")
                .is_some_and(|r| r.starts_with("ok")),
    );
    let virtio = metric_totals(vm.dir.path(), "virtio");
    let blk = metric_totals(vm.dir.path(), "block_data");
    table.record(
        "virtio-hostile: metrics",
        "notifies of a missing queue ignored and counted (>= 300000), no activation refused",
        &format!(
            "virtio.mmio_ignored_accesses={:?} virtio.activate_fails={:?} block_data.needs_reset_count={:?}",
            virtio.get("mmio_ignored_accesses"),
            virtio.get("activate_fails"),
            blk.get("needs_reset_count")
        ),
        virtio.get("mmio_ignored_accesses").is_some_and(|&n| n >= 300_000),
    );
    if cases != 27 {
        println!(
            "--- probe stdout\n{}\n--- stderr\n{}",
            run.stdout, run.stderr
        );
    }
    table.finish();
}

/// The net-hostile cases in the probe's order (case n goes to port 7100 + n), and whether
/// the frame must reach the tap.
const NET_CASES: &[(&str, bool)] = &[
    ("csum-at-port", false),
    ("csum-at-ip-src", false),
    ("csum-honest", true),
    ("gso-udp-unoffered", false),
    ("gso-size-1", false),
    ("data-valid", false),
    ("oversized", false),
    ("runt", false),
    ("ip-len-lies", false),
    ("ipv4-source-route", false),
    ("ipv6-routing-header", false),
    ("tiny-fragments", false), // Judged apart: see the test.
    ("honest", true),
];

/// Which case a captured frame belongs to, and a description of its addresses and ports.
fn classify(frame: &[u8]) -> Option<(usize, String)> {
    let marker = NET_CASES.iter().position(|(name, _)| {
        let m = format!("hostile-{name}");
        frame.windows(m.len()).any(|w| w == m.as_bytes())
    });
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return marker.map(|i| (i, format!("{} bytes, not IPv4", frame.len())));
    }
    let ihl = usize::from(frame[14] & 0xf) * 4;
    let frag = u16::from_be_bytes([frame[20], frame[21]]) & 0x3fff;
    let src = format!("{}.{}.{}.{}", frame[26], frame[27], frame[28], frame[29]);
    let l4 = 14 + ihl;
    let dport = frame
        .get(l4 + 2..l4 + 4)
        .map(|p| u16::from_be_bytes([p[0], p[1]]));
    let what = format!("src {src} dst port {dport:?} frag {frag:#x}");
    if frag != 0 {
        return Some((11, what));
    }
    let by_port = dport.and_then(|p| p.checked_sub(7100)).map(usize::from);
    marker
        .or(by_port.filter(|&i| i < NET_CASES.len()))
        .map(|i| (i, what))
}

#[test]
fn guest_tx_header_tricks_and_malformed_frames_never_reach_the_tap_altered() {
    let test = "guest_tx_header_tricks_and_malformed_frames_never_reach_the_tap_altered";
    if !can_attack(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return; // skipped (a failure under PALISADE_NO_SKIP, as in CI)
    };
    let mut table = Table::default();
    let frames = capture::capture(&ns, 60, b"hostile-honest");
    // Only UDP and TCP to ports 7100-7199 of the peer may leave: a frame whose port bytes
    // change after the firewall judged it, or that it could not judge, is a way around this.
    let fw = json!({
        "allowed_ips": ["10.0.0.2/32", "fd00::2/128"],
        "egress": [
            {"action": "allow", "proto": "udp", "ports": "7100-7199", "cidr": "10.0.0.1/32"},
            {"action": "allow", "proto": "tcp", "ports": "7100-7199", "cidr": "10.0.0.1/32"},
            {"action": "allow", "proto": "udp", "ports": "7100-7199", "cidr": "fd00::/64"}
        ],
        "default_egress": "deny"
    });
    let vm = three_device_probe(&ns, "net-hostile,idle", "", fw);
    let run = watched_run(&mut table, &vm, "net-hostile");
    let frames = frames.join().unwrap();
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); NET_CASES.len()];
    let guest_mac = [0x06, 0x00, 0x0a, 0x00, 0x00, 0x02];
    for frame in frames
        .iter()
        .filter(|f| f.len() >= 14 && f[6..12] == guest_mac)
    {
        if let Some((i, what)) = classify(frame) {
            seen[i].push(what);
        }
    }
    for (i, (name, deliver)) in NET_CASES.iter().enumerate() {
        let port = 7100 + i;
        let expected = if *name == "tiny-fragments" {
            "the overlapping fragment to denied port 22 dropped".to_string()
        } else if *deliver {
            format!("delivered once, src 10.0.0.2, dst port {port} as sent")
        } else {
            "dropped before the tap".to_string()
        };
        let intact = seen[i]
            .iter()
            .all(|w| w.starts_with(&format!("src 10.0.0.2 dst port Some({port}) ")));
        let pass = if *name == "tiny-fragments" {
            // Overlapping first fragments: the one to an allowed port may pass as it was
            // judged; the one aimed at port 22 must not.
            !seen[i].iter().any(|w| w.contains("dst port Some(22)"))
        } else if *deliver {
            seen[i].len() == 1 && intact
        } else {
            seen[i].is_empty()
        };
        let observed = if seen[i].is_empty() {
            "not delivered".to_string()
        } else {
            format!("delivered: {}", seen[i].join("; "))
        };
        table.record(&format!("net-hostile: {name}"), &expected, &observed, pass);
    }
    let m = metric_totals(vm.dir.path(), "net_eth0");
    let get = |k: &str| m.get(k).copied().unwrap_or(0);
    table.record(
        "net-hostile: metrics net_eth0",
        "tx_bad_vnet_hdr >= 5 (the header tricks), probe sent all",
        &format!(
            "tx_bad_vnet_hdr={} tx_fails={} fw_malformed={} fw_fragment={} fw_egress_drops={} probe {:?}",
            get("tx_bad_vnet_hdr"),
            get("tx_fails"),
            get("fw_malformed"),
            get("fw_fragment"),
            get("fw_egress_drops"),
            run.probe_result("net-hostile")
        ),
        get("tx_bad_vnet_hdr") >= 5
            && run.probe_result("net-hostile") == Some(format!("ok sent={}", NET_CASES.len()).as_str()),
    );
    table.finish();
}
