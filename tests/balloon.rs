//! virtio-balloon under the real VMM and KVM, driven by the probe guest's `balloon` scenario:
//! the guest fills 32 MiB, the host asks for a 32 MiB balloon by `PATCH /balloon`, the guest
//! gives those pages, and the VMM's RSS (VmRSS in /proc/PID/status) drops by about 32 MiB. The
//! same scenario then sends what a hostile driver would; each bad request is refused and
//! counted in the `balloon` metrics. The `balloon-stats` scenario feeds the statistics queue,
//! which `GET|PATCH /balloon/statistics` read and retune; `balloon-report` and `balloon-hint`
//! give free ranges back by free page reporting and by a hinting run the host starts. With
//! `balloon-snap` a balloon is saved in a snapshot and restored in a new process, where it keeps
//! working with the pages it held.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use common::api::{wait_for_socket, ApiClient};
use common::rss_kib;
use common::{kvm_available, metric_totals, probe_path, ApiVm, TestVm};

const TIMEOUT: Duration = Duration::from_secs(60);
const GUEST_MIB: u64 = 128;

/// The `balloon` metrics of the VMM that wrote DIR/metrics.json.
fn balloon_totals(dir: &Path) -> BTreeMap<String, u64> {
    metric_totals(dir, "balloon")
}

#[test]
fn pages_the_guest_gives_to_the_balloon_leave_the_vmms_rss_and_hostile_ones_are_counted() {
    if !kvm_available(
        "pages_the_guest_gives_to_the_balloon_leave_the_vmms_rss_and_hostile_ones_are_counted",
    ) {
        return;
    }
    let mut vm = TestVm::probe("balloon", 1, GUEST_MIB as usize);
    vm.config["balloon"] = json!({"amount_mib": 0, "deflate_on_oom": false});
    let sock = vm.dir.path().join("api.sock");
    let metrics = vm.dir.path().join("metrics.json");
    vm.args = vec![
        "--api-sock".into(),
        sock.to_str().unwrap().into(),
        "--boot-timer".into(),
        "--metrics-path".into(),
        metrics.to_str().unwrap().into(),
    ];
    let mut running = vm.spawn();
    wait_for_socket(&sock, TIMEOUT);
    let mut api = ApiClient::connect(&sock);
    running.wait_for_output("probe: balloon-filled ok pages=8192", TIMEOUT);
    let pid = running.child.id();
    let before = rss_kib(pid);
    assert!(before < (GUEST_MIB + 64) * 1024, "VmRSS {before} KiB");

    let r = api.patch("/balloon", json!({"amount_mib": 32}));
    assert_eq!(r.status, 204, "{}", r.body);
    running.wait_for_output("probe: balloon ok inflated=8192", TIMEOUT);
    let after = rss_kib(pid);
    let dropped = before.saturating_sub(after);
    eprintln!("VMM VmRSS: {before} KiB -> {after} KiB (dropped {dropped} KiB)");
    // About 32 MiB: the margin covers what the VMM and guest touch meanwhile.
    assert!(
        (28 * 1024..=36 * 1024).contains(&dropped),
        "VmRSS {before} KiB -> {after} KiB"
    );

    let got = api.get("/balloon").json();
    assert_eq!(got["amount_mib"], 32);
    assert_eq!(got["deflate_on_oom"], false);
    let stats = api.get("/balloon/statistics");
    assert_eq!(stats.status, 400);
    assert_eq!(
        stats.fault(),
        "Internal VMM error: Balloon: Received stats query when stats are disabled."
    );
    let r = api.put(
        "/balloon",
        json!({"amount_mib": 1, "deflate_on_oom": false}),
    );
    assert_eq!(
        r.fault(),
        "The requested operation is not supported after starting the microVM."
    );
    let r = api.patch("/balloon", json!({"amount_mib": GUEST_MIB + 1}));
    assert_eq!(
        r.fault(),
        "Balloon update error: Balloon: Requested memory should be less than 129MiB"
    );
    let r = api.patch(
        "/balloon/statistics",
        json!({"stats_polling_interval_s": 1}),
    );
    assert_eq!(
        r.fault(),
        "Balloon update error: Balloon: Statistics cannot be enabled/disabled after activation."
    );

    let r = api.patch("/balloon", json!({"amount_mib": 0}));
    assert_eq!(r.status, 204, "{}", r.body);
    let run = running.wait(TIMEOUT);
    run.assert_success();
    let totals = balloon_totals(vm.dir.path());
    assert_eq!(totals["inflated_pages"], 8192, "{totals:?}");
    // Past RAM, in the MMIO gap, a duplicate, u32::MAX, past the target, a deflate of a page
    // never inflated.
    assert_eq!(totals["refused_pfns"], 6, "{totals:?}");
    // An array of 7 bytes, a device-writable array.
    assert_eq!(totals["execute_fails"], 2, "{totals:?}");
    assert_eq!(totals["deflated_pages"], 1, "{totals:?}");
    assert_eq!(totals["madvise_fails"], 0, "{totals:?}");
    assert_eq!(totals["needs_reset_count"], 0, "{totals:?}");
}

/// The first page the `balloon-snap` scenario fills (guest-physical 32 MiB).
const SNAP_FIRST_PFN: u64 = (32 << 20) >> 12;

#[test]
fn a_balloon_is_saved_and_restored_with_its_pages_and_keeps_working_in_the_clone() {
    let test = "a_balloon_is_saved_and_restored_with_its_pages_and_keeps_working_in_the_clone";
    if !kvm_available(test) {
        return;
    }
    let snap = tempfile::tempdir().unwrap();
    let snap_dir = snap.path().to_str().unwrap().to_string();
    let mut vm = ApiVm::start(&["--snapshot-dir", &snap_dir]);
    let mut c = vm.client();
    for (path, body) in [
        (
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": GUEST_MIB}),
        ),
        (
            "/boot-source",
            json!({"kernel_image_path": probe_path(),
                   "boot_args": "console=ttyS0 probe.run=balloon-snap"}),
        ),
        // The guest declines statistics and hinting: its queues are numbered without them.
        (
            "/balloon",
            json!({"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 3,
                   "free_page_hinting": true}),
        ),
        ("/actions", json!({"action_type": "InstanceStart"})),
    ] {
        let r = c.put(path, body);
        assert_eq!(r.status, 204, "{path}: {}", r.body);
    }
    vm.running
        .wait_for_output("probe: balloon-snap ok filled", TIMEOUT);
    // 16 MiB into the balloon before the snapshot.
    assert_eq!(c.patch("/balloon", json!({"amount_mib": 16})).status, 204);
    vm.running
        .wait_for_output("probe: balloon-snap ok saved-at inflated=4096", TIMEOUT);
    assert_eq!(c.patch("/vm", json!({"state": "Paused"})).status, 204);
    let (state, mem) = (snap.path().join("state"), snap.path().join("mem"));
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    vm.running.kill();
    // The pages given before the snapshot were given back: they are zeros in the memory file
    // (the guest had filled them), so the clone maps nothing of them.
    let bytes = std::fs::read(&mem).unwrap();
    let start = (SNAP_FIRST_PFN << 12) as usize;
    let given = &bytes[start..start + (16 << 20)];
    assert!(given.iter().all(|&b| b == 0), "inflated pages hold data");
    let next = &bytes[start + (16 << 20)..start + (17 << 20)];
    assert!(
        next.iter().any(|&b| b != 0),
        "the rest of the fill is saved"
    );

    let clone_dir = tempfile::tempdir().unwrap();
    let metrics = clone_dir.path().join("metrics.json");
    let mut clone = ApiVm::start_in(
        clone_dir,
        &[
            "--snapshot-dir",
            &snap_dir,
            "--metrics-path",
            metrics.to_str().unwrap(),
        ],
    );
    let mut c = clone.client();
    let r = c.put(
        "/snapshot/load",
        json!({"snapshot_path": state,
               "mem_backend": {"backend_type": "File", "backend_path": mem},
               "resume_vm": true}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    assert_eq!(
        c.get("/balloon").json(),
        json!({"amount_mib": 16, "deflate_on_oom": true, "stats_polling_interval_s": 3,
               "free_page_hinting": true, "free_page_reporting": false})
    );
    // As Firecracker restores it: no hinting run goes on in the clone (DONE).
    assert_eq!(
        c.get("/balloon/hinting/status").json(),
        json!({"host_cmd": 1, "guest_cmd": null})
    );
    let stats = c.get("/balloon/statistics").json();
    assert_eq!(
        (&stats["target_mib"], &stats["actual_pages"]),
        (&json!(16), &json!(4096)),
        "{stats}"
    );
    let pid = clone.running.child.id();
    let before = rss_kib(pid);
    // 16 MiB more: the guest writes those pages in the clone, then gives them.
    assert_eq!(c.patch("/balloon", json!({"amount_mib": 32})).status, 204);
    clone
        .running
        .wait_for_output("probe: balloon-snap ok inflated=4096 deflated=1", TIMEOUT);
    let after = rss_kib(pid);
    eprintln!("clone VmRSS: {before} KiB -> {after} KiB");
    // Without the balloon the clone would hold the 16 MiB the guest wrote.
    assert!(
        after < before + 6 * 1024,
        "VmRSS {before} KiB -> {after} KiB"
    );
    assert_eq!(
        c.put("/actions", json!({"action_type": "FlushMetrics"}))
            .status,
        204
    );
    assert_eq!(c.get("/balloon/statistics").json()["actual_pages"], 8191);
    let totals = balloon_totals(clone.dir.path());
    assert_eq!(totals["inflated_pages"], 4096, "{totals:?}");
    // The page given before the snapshot, sent again: refused as in the balloon already.
    assert_eq!(totals["refused_pfns"], 1, "{totals:?}");
    // A page given before the snapshot: taken back from the restored balloon.
    assert_eq!(totals["deflated_pages"], 1, "{totals:?}");
    assert_eq!(totals["madvise_fails"], 0, "{totals:?}");
    assert_eq!(c.patch("/balloon", json!({"amount_mib": 0})).status, 204);
    clone.running.wait(TIMEOUT).assert_success();
}

/// Pages the guest filled before a Full snapshot and gave to the balloon after it: KVM's dirty
/// log never saw them change, yet a Diff written onto the Full's memory file leaves zeros
/// there, not the data the guest gave back.
#[test]
fn pages_given_after_a_full_snapshot_are_zeros_in_a_diff_written_onto_it() {
    let test = "pages_given_after_a_full_snapshot_are_zeros_in_a_diff_written_onto_it";
    if !kvm_available(test) {
        return;
    }
    let snap = tempfile::tempdir().unwrap();
    let snap_dir = snap.path().to_str().unwrap().to_string();
    let mut vm = ApiVm::start(&["--snapshot-dir", &snap_dir]);
    let mut c = vm.client();
    for (path, body) in [
        (
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": GUEST_MIB, "track_dirty_pages": true}),
        ),
        (
            "/boot-source",
            json!({"kernel_image_path": probe_path(),
                   "boot_args": "console=ttyS0 probe.run=balloon-snap"}),
        ),
        (
            "/balloon",
            json!({"amount_mib": 0, "deflate_on_oom": false}),
        ),
        ("/actions", json!({"action_type": "InstanceStart"})),
    ] {
        let r = c.put(path, body);
        assert_eq!(r.status, 204, "{path}: {}", r.body);
    }
    vm.running
        .wait_for_output("probe: balloon-snap ok filled", TIMEOUT);
    let (base, mem) = (snap.path().join("mem0"), snap.path().join("mem"));
    assert_eq!(c.patch("/vm", json!({"state": "Paused"})).status, 204);
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": snap.path().join("state0"),
               "mem_file_path": base}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    let start = (SNAP_FIRST_PFN << 12) as usize;
    let bytes = std::fs::read(&base).unwrap();
    assert!(
        bytes[start..start + (16 << 20)].iter().any(|&b| b != 0),
        "the Full snapshot holds the fill"
    );
    assert_eq!(c.patch("/vm", json!({"state": "Resumed"})).status, 204);
    // 16 MiB of the fill into the balloon; the guest does not write those pages again.
    assert_eq!(c.patch("/balloon", json!({"amount_mib": 16})).status, 204);
    vm.running
        .wait_for_output("probe: balloon-snap ok saved-at inflated=4096", TIMEOUT);
    assert_eq!(c.patch("/vm", json!({"state": "Paused"})).status, 204);
    std::fs::copy(&base, &mem).unwrap();
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_type": "Diff", "snapshot_path": snap.path().join("state1"),
               "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    vm.running.kill();
    let bytes = std::fs::read(&mem).unwrap();
    let given = &bytes[start..start + (16 << 20)];
    let left = given
        .chunks_exact(4096)
        .filter(|p| p.iter().any(|&b| b != 0));
    assert_eq!(
        left.count(),
        0,
        "pages given back still hold the guest's data"
    );
    assert!(
        bytes[start + (16 << 20)..start + (17 << 20)]
            .iter()
            .any(|&b| b != 0),
        "the rest of the fill is kept"
    );
}

#[test]
fn the_guests_statistics_are_polled_and_answered_and_a_malformed_buffer_is_counted() {
    if !kvm_available(
        "the_guests_statistics_are_polled_and_answered_and_a_malformed_buffer_is_counted",
    ) {
        return;
    }
    let mut vm = TestVm::probe("balloon-stats,idle", 1, 64);
    vm.config["balloon"] =
        json!({"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1});
    let sock = vm.dir.path().join("api.sock");
    let metrics = vm.dir.path().join("metrics.json");
    vm.args = vec![
        "--api-sock".into(),
        sock.to_str().unwrap().into(),
        "--boot-timer".into(),
        "--metrics-path".into(),
        metrics.to_str().unwrap().into(),
    ];
    let mut running = vm.spawn();
    wait_for_socket(&sock, TIMEOUT);
    running.wait_for_output("probe: balloon-stats ok rounds=2 free=1002", TIMEOUT);
    let mut api = ApiClient::connect(&sock);
    // The guest's last buffer reaches the device by its queue, the request by the API: wait
    // for the state, with a deadline.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let stats = loop {
        let stats = api.get("/balloon/statistics").json();
        if stats["free_memory"] == 1002 || std::time::Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(10)); // A poll interval, not synchronisation.
    };
    assert_eq!(
        stats,
        json!({"target_pages": 0, "actual_pages": 0, "target_mib": 0, "actual_mib": 0,
               "free_memory": 1002, "total_memory": 64 << 20})
    );
    let r = api.patch(
        "/balloon/statistics",
        json!({"stats_polling_interval_s": 2}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(api.get("/balloon").json()["stats_polling_interval_s"], 2);
    let r = api.patch(
        "/balloon/statistics",
        json!({"stats_polling_interval_s": 0}),
    );
    assert_eq!(
        r.fault(),
        "Balloon update error: Balloon: Statistics cannot be enabled/disabled after activation."
    );
    assert_eq!(
        api.put("/actions", json!({"action_type": "FlushMetrics"}))
            .status,
        204
    );
    drop(running);
    let totals = balloon_totals(vm.dir.path());
    assert_eq!(totals["stats_update_fails"], 1, "{totals:?}");
    assert!(totals["stats_updates_count"] >= 3, "{totals:?}");
    assert_eq!(totals["needs_reset_count"], 0, "{totals:?}");
}

#[test]
fn free_ranges_the_guest_reports_leave_the_vmms_rss_and_malformed_reports_are_counted() {
    if !kvm_available(
        "free_ranges_the_guest_reports_leave_the_vmms_rss_and_malformed_reports_are_counted",
    ) {
        return;
    }
    let mut vm = TestVm::probe("balloon-report", 1, GUEST_MIB as usize);
    vm.config["balloon"] =
        json!({"amount_mib": 0, "deflate_on_oom": false, "free_page_reporting": true});
    let sock = vm.dir.path().join("api.sock");
    let metrics = vm.dir.path().join("metrics.json");
    vm.args = vec![
        "--api-sock".into(),
        sock.to_str().unwrap().into(),
        "--boot-timer".into(),
        "--metrics-path".into(),
        metrics.to_str().unwrap().into(),
    ];
    let mut running = vm.spawn();
    wait_for_socket(&sock, TIMEOUT);
    let mut api = ApiClient::connect(&sock);
    running.wait_for_output("probe: balloon-report ok filled", TIMEOUT);
    let pid = running.child.id();
    let before = rss_kib(pid);
    // The target change is the guest's signal that the host measured.
    assert_eq!(api.patch("/balloon", json!({"amount_mib": 1})).status, 204);
    running.wait_for_output("probe: balloon-report ok reported=16777216", TIMEOUT);
    let after = rss_kib(pid);
    let dropped = before.saturating_sub(after);
    eprintln!("VMM VmRSS: {before} KiB -> {after} KiB (dropped {dropped} KiB)");
    assert!(
        (14 * 1024..=18 * 1024).contains(&dropped),
        "VmRSS {before} KiB -> {after} KiB"
    );
    assert_eq!(api.get("/balloon").json()["free_page_reporting"], true);
    assert_eq!(api.patch("/balloon", json!({"amount_mib": 0})).status, 204);
    running.wait(TIMEOUT).assert_success();
    let totals = balloon_totals(vm.dir.path());
    assert_eq!(totals["free_page_report_count"], 1, "{totals:?}");
    assert_eq!(totals["free_page_report_freed"], 16 << 20, "{totals:?}");
    assert_eq!(totals["free_page_report_fails"], 2, "{totals:?}");
    assert_eq!(totals["madvise_fails"], 0, "{totals:?}");
}

#[test]
fn hinted_free_ranges_leave_the_vmms_rss_and_hostile_hints_are_counted() {
    let test = "hinted_free_ranges_leave_the_vmms_rss_and_hostile_hints_are_counted";
    if !kvm_available(test) {
        return;
    }
    let mut vm = TestVm::probe("balloon-hint", 1, GUEST_MIB as usize);
    vm.config["balloon"] = json!({"amount_mib": 0, "deflate_on_oom": false,
        "stats_polling_interval_s": 1, "free_page_hinting": true, "free_page_reporting": true});
    let sock = vm.dir.path().join("api.sock");
    let metrics = vm.dir.path().join("metrics.json");
    vm.args = vec![
        "--api-sock".into(),
        sock.to_str().unwrap().into(),
        "--boot-timer".into(),
        "--metrics-path".into(),
        metrics.to_str().unwrap().into(),
    ];
    let mut running = vm.spawn();
    wait_for_socket(&sock, TIMEOUT);
    let mut api = ApiClient::connect(&sock);
    running.wait_for_output("probe: balloon-hint ok filled", TIMEOUT);
    assert_eq!(
        api.get("/balloon/hinting/status").json(),
        json!({"host_cmd": 0, "guest_cmd": null})
    );
    let pid = running.child.id();
    let before = rss_kib(pid);
    // No body: acknowledge_on_stop defaults to true (the device answers STOP with DONE).
    let r = api.request("PATCH", "/balloon/hinting/start", None);
    assert_eq!(r.status, 204, "{}", r.body);
    running.wait_for_output("probe: balloon-hint ok hinted=16777216 done=1", TIMEOUT);
    let after = rss_kib(pid);
    let dropped = before.saturating_sub(after);
    eprintln!("VMM VmRSS: {before} KiB -> {after} KiB (dropped {dropped} KiB)");
    assert!(
        (14 * 1024..=18 * 1024).contains(&dropped),
        "VmRSS {before} KiB -> {after} KiB"
    );
    assert_eq!(
        api.get("/balloon/hinting/status").json(),
        json!({"host_cmd": 1, "guest_cmd": 0})
    );
    // A second run gets the next id; stop ends it (a body is ignored).
    let r = api.patch(
        "/balloon/hinting/start",
        json!({"acknowledge_on_stop": false}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(api.get("/balloon/hinting/status").json()["host_cmd"], 3);
    let r = api.request("PATCH", "/balloon/hinting/stop", None);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(api.get("/balloon/hinting/status").json()["host_cmd"], 1);
    let r = api.patch("/balloon/hinting/start", json!({"acknowledge": true}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(api.get("/balloon").json()["free_page_hinting"], true);
    assert_eq!(api.patch("/balloon", json!({"amount_mib": 1})).status, 204);
    running.wait(TIMEOUT).assert_success();
    let totals = balloon_totals(vm.dir.path());
    // The 8 blocks of the run: the hints sent before the run and after DONE were dropped.
    assert_eq!(totals["free_page_hint_count"], 8, "{totals:?}");
    assert_eq!(totals["free_page_hint_freed"], 16 << 20, "{totals:?}");
    // The MMIO gap, past RAM, unaligned, a readable 8-byte buffer.
    assert_eq!(totals["free_page_hint_fails"], 4, "{totals:?}");
    assert_eq!(totals["madvise_fails"], 0, "{totals:?}");
    assert_eq!(totals["needs_reset_count"], 0, "{totals:?}");
}

#[test]
fn hinting_routes_answer_as_firecracker_does_without_hinting() {
    let test = "hinting_routes_answer_as_firecracker_does_without_hinting";
    if !kvm_available(test) {
        return;
    }
    let mut vm = TestVm::probe("balloon-stats,idle", 1, 64);
    vm.config["balloon"] =
        json!({"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1});
    let sock = vm.dir.path().join("api.sock");
    vm.args = vec![
        "--api-sock".into(),
        sock.to_str().unwrap().into(),
        "--boot-timer".into(),
    ];
    let mut running = vm.spawn();
    wait_for_socket(&sock, TIMEOUT);
    running.wait_for_output("probe: balloon-stats ok", TIMEOUT);
    let mut api = ApiClient::connect(&sock);
    let not_enabled = "Balloon update error: Balloon: Attempting to use hinting when not enabled";
    assert_eq!(api.get("/balloon/hinting/status").fault(), not_enabled);
    assert_eq!(
        api.request("PATCH", "/balloon/hinting/start", None).fault(),
        not_enabled
    );
    assert_eq!(
        api.request("PATCH", "/balloon/hinting/stop", Some(""))
            .fault(),
        not_enabled
    );
    let r = api.get("/balloon/hinting/other");
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn a_balloon_over_locked_or_2m_guest_memory_is_refused_at_start_by_name() {
    if !kvm_available("a_balloon_over_locked_or_2m_guest_memory_is_refused_at_start_by_name") {
        return;
    }
    for (field, value, why) in [
        ("mem_lock", json!(true), "locked guest memory"),
        (
            "huge_pages",
            json!("2M"),
            "memory backed by 2 MiB huge pages",
        ),
    ] {
        let mut vm = TestVm::probe("hello", 1, 64);
        vm.config["machine-config"][field] = value;
        vm.config["balloon"] = json!({"amount_mib": 0, "deflate_on_oom": false});
        let run = vm.run(TIMEOUT);
        assert!(!run.status.success(), "{field}: {}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("A balloon cannot give back {why}")),
            "{field}: {}",
            run.stderr
        );
        assert!(run.probe_result("hello").is_none(), "the guest never ran");
    }
}
