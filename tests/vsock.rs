//! virtio-vsock under the real VMM, KVM, its seccomp filter and Landlock layer, driven by the
//! probe guest's vsock scenarios: Firecracker's contract (host-initiated `CONNECT <port>`,
//! guest-initiated `<uds_path>_<port>`, RST when nothing listens), Palisade's policy (ports,
//! connection cap, `PATCH /vsock`) with refusals counted by reason, and a guest that stops
//! reading.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use common::vsock::{
    crc32, echo_round_trip, fields, host_connect, line_with, pattern, vsock_totals, wait_for_line,
    EchoListener,
};
use common::{kvm_available, probe_path, rss_kib, ApiVm, TestVm};

const TIMEOUT: Duration = Duration::from_secs(120);
const CID: u32 = 3;
const PORT: u32 = 5000;
const MIB: usize = 1 << 20;

/// A probe VM running `scenario` with `params`, a vsock device (CID 3, `uds_path` in its
/// directory, `policy` if given) and a metrics file.
struct VsockVm {
    vm: TestVm,
    uds: PathBuf,
    metrics: PathBuf,
}

impl VsockVm {
    fn new(scenario: &str, params: &str, policy: Option<Value>) -> Self {
        let mut vm = TestVm::probe(scenario, 1, 64);
        vm.config["boot-source"]["boot_args"] =
            json!(format!("console=ttyS0 probe.run={scenario} {params}"));
        let uds = vm.dir.path().join("v.sock");
        vm.config["vsock"] = json!({"guest_cid": CID, "uds_path": uds});
        if let Some(policy) = policy {
            vm.config["vsock"]["policy"] = policy;
        }
        let metrics = vm.dir.path().join("metrics.json");
        vm.args
            .extend(["--metrics-path".into(), metrics.to_str().unwrap().into()]);
        Self { vm, uds, metrics }
    }

    fn totals(&self) -> std::collections::BTreeMap<String, u64> {
        vsock_totals(&self.metrics)
    }
}

fn assert_confined(stderr: &str) {
    assert!(
        stderr.contains("VMM Landlock ABI") && stderr.contains("enforced"),
        "the VMM's Landlock layer is on: {stderr}"
    );
    assert!(!stderr.contains("Seccomp filtering is OFF"), "{stderr}");
}

#[test]
fn a_host_client_connects_to_a_guest_port_and_4_mib_echo_back_crc_checked() {
    if !kvm_available("a_host_client_connects_to_a_guest_port_and_4_mib_echo_back_crc_checked") {
        return;
    }
    let v = VsockVm::new(
        "vsock-echo",
        "probe.port=5000 probe.count=1 probe.secs=90",
        None,
    );
    let mut running = v.vm.spawn();
    running.wait_for_output("probe: vsock-echo ready cid=3 port=5000", TIMEOUT);
    let stream = host_connect(&v.uds, PORT).unwrap();
    let data = pattern(4 * MIB, 0);
    let back = echo_round_trip(&stream, &data);
    assert!(
        back == data,
        "echoed {} bytes, crc32 {:08x}, not {:08x}",
        back.len(),
        crc32(&back),
        crc32(&data)
    );
    stream.shutdown(Shutdown::Write).unwrap();
    running.wait_for_output("probe: vsock-echo ok", TIMEOUT);
    drop(stream);
    let run = running.wait(TIMEOUT);
    run.assert_success();
    assert_confined(&run.stderr);
    let conn = fields(line_with(&run.stdout, "probe: vsock-echo conn").unwrap());
    assert_eq!(conn["bytes"], (4 * MIB).to_string(), "{conn:?}");
    assert_eq!(conn["crc32"], format!("{:08x}", crc32(&data)), "{conn:?}");
    let totals = v.totals();
    assert_eq!(totals["conns_opened_host"], 1, "{totals:?}");
    assert_eq!(totals["tx_bytes_count"], 4 * MIB as u64, "{totals:?}");
    assert_eq!(totals["rx_bytes_count"], 4 * MIB as u64, "{totals:?}");
}

#[test]
fn a_guest_connect_reaches_the_uds_path_port_listener_and_4_mib_go_both_ways_crc_checked() {
    if !kvm_available(
        "a_guest_connect_reaches_the_uds_path_port_listener_and_4_mib_go_both_ways_crc_checked",
    ) {
        return;
    }
    let v = VsockVm::new("vsock-connect", "probe.port=5000 probe.bytes=4194304", None);
    let listener = EchoListener::start(&v.uds, PORT);
    let run = v.vm.run(TIMEOUT);
    run.assert_success();
    assert_confined(&run.stderr);
    let detail = run.assert_probe_ok("vsock-connect");
    let f = fields(&detail);
    let want = format!("{:08x}", crc32(&pattern(4 * MIB, 0)));
    assert_eq!(f["sent"], (4 * MIB).to_string(), "{detail}");
    assert_eq!(f["received"], (4 * MIB).to_string(), "{detail}");
    assert_eq!((&f["sent_crc32"], &f["received_crc32"]), (&want, &want));
    let received = listener.received.lock().unwrap();
    assert_eq!(
        received.len(),
        1,
        "one connection reached the host listener"
    );
    assert!(
        received[0] == pattern(4 * MIB, 0),
        "the host got the pattern"
    );
    let totals = v.totals();
    assert_eq!(totals["conns_opened_guest"], 1, "{totals:?}");
}

#[test]
fn a_guest_connect_to_a_port_nobody_listens_on_gets_rst_and_is_counted() {
    if !kvm_available("a_guest_connect_to_a_port_nobody_listens_on_gets_rst_and_is_counted") {
        return;
    }
    let v = VsockVm::new("vsock-connect", "probe.port=5000", None);
    let run = v.vm.run(TIMEOUT);
    run.assert_success();
    assert_eq!(
        run.probe_result("vsock-connect"),
        Some("fail cid=3 connect=reset")
    );
    let totals = v.totals();
    assert_eq!(totals["refused_no_listener"], 1, "{totals:?}");
    assert_eq!(totals["conns_opened_guest"], 0, "{totals:?}");
}

/// Runs vsock-connect to a listening port under `policy`: it must be refused by the policy.
fn assert_policy_refuses_guest_connect(policy: Value) {
    let v = VsockVm::new("vsock-connect", "probe.port=5000", Some(policy));
    let listener = EchoListener::start(&v.uds, PORT);
    let run = v.vm.run(TIMEOUT);
    run.assert_success();
    assert_eq!(
        run.probe_result("vsock-connect"),
        Some("fail cid=3 connect=reset")
    );
    assert!(
        listener.received.lock().unwrap().is_empty(),
        "nothing got through"
    );
    let totals = v.totals();
    assert_eq!(totals["refused_policy_port"], 1, "{totals:?}");
    assert_eq!(totals["refused_no_listener"], 0, "{totals:?}");
    assert_eq!(totals["conns_opened_guest"], 0, "{totals:?}");
}

#[test]
fn a_guest_connect_to_a_port_outside_guest_initiated_gets_rst_counted_as_policy() {
    if !kvm_available(
        "a_guest_connect_to_a_port_outside_guest_initiated_gets_rst_counted_as_policy",
    ) {
        return;
    }
    assert_policy_refuses_guest_connect(json!({"guest_initiated": ["6000-6001", "4999"]}));
}

#[test]
fn an_empty_guest_initiated_list_denies_every_guest_connect() {
    if !kvm_available("an_empty_guest_initiated_list_denies_every_guest_connect") {
        return;
    }
    assert_policy_refuses_guest_connect(json!({"guest_initiated": []}));
}

#[test]
fn max_connections_n_lets_the_guest_open_exactly_n() {
    if !kvm_available("max_connections_n_lets_the_guest_open_exactly_n") {
        return;
    }
    let v = VsockVm::new(
        "vsock-many",
        "probe.port=5000 probe.count=10",
        Some(json!({"max_connections": 4})),
    );
    let _listener = EchoListener::start(&v.uds, PORT);
    let run = v.vm.run(TIMEOUT);
    run.assert_success();
    let detail = run.assert_probe_ok("vsock-many");
    let f = fields(&detail);
    assert_eq!(f["opened"], "4", "{detail}");
    assert_eq!(f["refused"], "rst", "{detail}");
    assert_eq!(
        f["reopen"], "ok",
        "a closed connection frees its slot: {detail}"
    );
    let totals = v.totals();
    assert!(totals["refused_max_connections"] >= 1, "{totals:?}");
    assert_eq!(totals["conns_opened_guest"], 5, "{totals:?}");
}

/// The API socket of `vm`, a fresh client per request.
fn api(vm: &ApiVm, method: &str, path: &str, body: Option<Value>) -> common::api::ApiResponse {
    let body = body.map(|b| b.to_string());
    vm.client().request(method, path, body.as_deref())
}

#[test]
fn patch_vsock_after_boot_changes_which_guest_ports_a_host_client_may_reach() {
    if !kvm_available("patch_vsock_after_boot_changes_which_guest_ports_a_host_client_may_reach") {
        return;
    }
    let mut vm = ApiVm::start(&[]);
    let uds = vm.dir.path().join("v.sock");
    let metrics = vm.dir.path().join("metrics.json");
    let boot = "console=ttyS0 probe.run=vsock-echo probe.port=5000 probe.count=1 probe.secs=90";
    for (path, body) in [
        ("/metrics", json!({"metrics_path": metrics})),
        (
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 64}),
        ),
        (
            "/boot-source",
            json!({"kernel_image_path": probe_path(), "boot_args": boot}),
        ),
        // Firecracker's older clients name the device in the path and the body.
        (
            "/vsock/vsock0",
            json!({"vsock_id": "vsock0", "guest_cid": CID, "uds_path": uds,
                   "policy": {"host_initiated": ["6000"]}}),
        ),
        ("/actions", json!({"action_type": "InstanceStart"})),
    ] {
        let r = api(&vm, "PUT", path, Some(body));
        assert_eq!(r.status, 204, "PUT {path}: {}", r.body);
    }
    vm.running
        .wait_for_output("probe: vsock-echo ready", TIMEOUT);
    assert_eq!(host_connect(&uds, PORT).err().as_deref(), Some(""));

    let r = api(
        &vm,
        "PATCH",
        "/vsock",
        Some(json!({"policy": {"host_initiated": ["5000"], "max_connections": 2}})),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let stream = host_connect(&uds, PORT).unwrap();
    let data = pattern(MIB, 7);
    assert!(echo_round_trip(&stream, &data) == data);
    // While the connection is open (the guest powers off when its scenario ends).
    let config = api(&vm, "GET", "/vm/config", None).json();
    assert_eq!(
        config["vsock"],
        json!({"vsock_id": "vsock0", "guest_cid": CID, "uds_path": uds,
               "policy": {"host_initiated": ["5000"], "max_connections": 2}})
    );
    let r = api(
        &vm,
        "PUT",
        "/vsock",
        Some(json!({"guest_cid": 4, "uds_path": uds})),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.fault().contains("not supported after starting"),
        "{}",
        r.body
    );
    let r = api(
        &vm,
        "PATCH",
        "/vsock",
        Some(json!({"policy": {"max_connections": 0}})),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.fault().contains("Invalid max_connections 0"),
        "{}",
        r.body
    );

    let r = api(
        &vm,
        "PUT",
        "/actions",
        Some(json!({"action_type": "FlushMetrics"})),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let totals = vsock_totals(&metrics);
    assert_eq!(totals["refused_policy_port"], 1, "{totals:?}");
    assert_eq!(totals["conns_opened_host"], 1, "{totals:?}");
    assert_eq!(totals["update_count"], 1, "{totals:?}");
    stream.shutdown(Shutdown::Write).unwrap();
    vm.running.wait_for_output("probe: vsock-echo ok", TIMEOUT);
}

#[test]
fn put_and_patch_vsock_before_boot_answer_clear_400s_and_bind_the_listener_at_put() {
    let vm = ApiVm::start(&[]);
    let uds = vm.dir.path().join("v.sock");
    let r = api(&vm, "PATCH", "/vsock", Some(json!({"policy": {}})));
    assert_eq!(r.status, 400);
    assert_eq!(r.fault(), "No vsock device is configured");
    let missing_dir = vm.dir.path().join("no-such-dir/v.sock");
    for (body, want) in [
        (
            json!({"guest_cid": 3, "uds_path": missing_dir}),
            "Cannot listen on",
        ),
        (
            json!({"guest_cid": 2, "uds_path": uds}),
            "Invalid guest_cid 2",
        ),
        (
            json!({"guest_cid": 3, "uds_path": uds, "policy": {"guest_initiated": ["x"]}}),
            "Invalid vsock port range 'x'",
        ),
        (json!({"guest_cid": 3}), "missing field `uds_path`"),
    ] {
        let r = api(&vm, "PUT", "/vsock", Some(body.clone()));
        assert_eq!(r.status, 400, "{body}");
        assert!(r.fault().contains(want), "{body}: {}", r.body);
    }
    assert!(!uds.exists());
    let r = api(
        &vm,
        "PUT",
        "/vsock",
        Some(json!({"guest_cid": 3, "uds_path": uds})),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(
        std::os::unix::net::UnixStream::connect(&uds).is_ok(),
        "the listener is bound by the PUT, as Firecracker does"
    );
    // A second PUT replaces the device, on the same path.
    let r = api(
        &vm,
        "PUT",
        "/vsock",
        Some(json!({"guest_cid": 4, "uds_path": uds})),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(std::os::unix::net::UnixStream::connect(&uds).is_ok());
    let r = api(
        &vm,
        "PATCH",
        "/vsock",
        Some(json!({"policy": {"guest_initiated": []}})),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let config = api(&vm, "GET", "/vm/config", None).json();
    assert_eq!(
        config["vsock"],
        json!({"guest_cid": 4, "uds_path": uds, "policy": {"guest_initiated": []}})
    );
}

#[test]
fn a_firecracker_config_file_with_a_vsock_section_boots_and_get_vm_config_shows_it() {
    if !kvm_available(
        "a_firecracker_config_file_with_a_vsock_section_boots_and_get_vm_config_shows_it",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("fc.vsock");
    // Firecracker's documented example, with its empty sections.
    let config = json!({
        "boot-source": {
            "kernel_image_path": probe_path(),
            "boot_args": "console=ttyS0 reboot=k panic=1 pci=off probe.run=vsock-echo probe.port=52 probe.secs=90",
            "initrd_path": null
        },
        "drives": [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "smt": false},
        "network-interfaces": [],
        "vsock": {"vsock_id": "vsock0", "guest_cid": 3, "uds_path": uds}
    });
    let path = dir.path().join("vm.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut vm = ApiVm::start(&["--config-file", path.to_str().unwrap()]);
    vm.running
        .wait_for_output("probe: vsock-echo ready cid=3 port=52", TIMEOUT);
    let shown = api(&vm, "GET", "/vm/config", None).json();
    assert_eq!(shown["vsock"], config["vsock"]);
    let stream = host_connect(&uds, 52).unwrap();
    let data = pattern(256 * 1024, 3);
    assert!(echo_round_trip(&stream, &data) == data);
    stream.shutdown(Shutdown::Write).unwrap();
    vm.running.wait_for_output("probe: vsock-echo ok", TIMEOUT);
}

#[test]
fn a_guest_that_stops_reading_keeps_vmm_memory_bounded_and_the_api_answering() {
    if !kvm_available("a_guest_that_stops_reading_keeps_vmm_memory_bounded_and_the_api_answering") {
        return;
    }
    const SENT: usize = 32 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let config = json!({
        "boot-source": {
            "kernel_image_path": probe_path(),
            "boot_args": format!(
                "console=ttyS0 probe.run=vsock-stall probe.port=5000 probe.secs=2 \
                 probe.bytes={SENT} probe.tsc_mhz={}",
                common::netns::tsc_mhz()
            ),
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
        "vsock": {"guest_cid": CID, "uds_path": uds},
    });
    let path = dir.path().join("vm.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut vm = ApiVm::start(&["--config-file", path.to_str().unwrap()]);
    let pid = vm.running.child.id();
    vm.running
        .wait_for_output("probe: vsock-stall ready", TIMEOUT);
    let before = rss_kib(pid);
    // Made before the connection: the guest's not-consuming phase starts at once.
    let data = pattern(SENT, 0);
    let stream = host_connect(&uds, PORT).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let ok = writer.write_all(&data).is_ok();
        let _ = writer.shutdown(Shutdown::Write);
        ok
    });
    vm.running
        .wait_for_output("probe: vsock-stall not-polling", TIMEOUT);
    // The guest neither consumes nor polls: the API still answers, and the VMM did not take
    // the host's 32 MiB in.
    let r = api(&vm, "GET", "/", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let during = rss_kib(pid);
    eprintln!("VMM RSS: {before} KiB before the connection, {during} KiB while stalled");
    assert!(
        during < before + 8 * 1024,
        "VMM RSS grew from {before} KiB to {during} KiB while the guest stalled"
    );
    assert!(!sender.is_finished(), "the host could not write everything");
    let line = wait_for_line(&mut vm.running, "probe: vsock-stall ok", TIMEOUT);
    assert!(sender.join().unwrap());
    let f = fields(&line);
    assert_eq!(f["over_credit"], "0", "{f:?}");
    assert_eq!(f["received"], SENT.to_string(), "{f:?}");
    assert!(f["held"].parse::<u64>().unwrap() <= 65536, "{f:?}");
}

/// The built-in profile without `syscall` in the VMM thread's filter.
fn profile_without_vmm(syscall: &str) -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/seccomp-profiles/x86_64.json"
    ))
    .unwrap();
    let mut profile: Value = serde_json::from_str(&text).unwrap();
    let rules = profile["vmm"]["filter"].as_array_mut().unwrap();
    let before = rules.len();
    rules.retain(|r| r["syscall"] != syscall);
    assert!(rules.len() < before, "vmm does not allow {syscall}");
    profile
}

#[test]
fn the_vmm_thread_needs_its_socket_rule_for_a_guest_connect_and_dies_without_it() {
    if !kvm_available(
        "the_vmm_thread_needs_its_socket_rule_for_a_guest_connect_and_dies_without_it",
    ) {
        return;
    }
    let mut v = VsockVm::new("vsock-connect", "probe.port=5000", None);
    let _listener = EchoListener::start(&v.uds, PORT);
    let profile = v.vm.dir.path().join("filters.json");
    std::fs::write(&profile, profile_without_vmm("socket").to_string()).unwrap();
    v.vm.args
        .extend(["--seccomp-filter".into(), profile.to_str().unwrap().into()]);
    let run = v.vm.run(TIMEOUT);
    assert_eq!(run.status.signal(), Some(31), "SIGSYS: {run:?}");
    assert!(run.stdout.contains("probe: ready"), "{}", run.stdout);
}

#[test]
fn a_hostile_guests_19_bad_packets_are_refused_and_counted_and_a_good_connection_still_works() {
    if !kvm_available(
        "a_hostile_guests_19_bad_packets_are_refused_and_counted_and_a_good_connection_still_works",
    ) {
        return;
    }
    let v = VsockVm::new("vsock-hostile", "probe.port=5000", None);
    let _listener = EchoListener::start(&v.uds, PORT);
    let run = v.vm.run(TIMEOUT);
    run.assert_success();
    assert_confined(&run.stderr);
    let detail = run.assert_probe_ok("vsock-hostile");
    assert_eq!(detail, "cases=19", "{}", run.stdout);
    let totals = v.totals();
    for counter in [
        "bad_src_cid",
        "bad_dst_cid",
        "bad_type",
        "bad_op",
        "bad_len",
    ] {
        assert!(totals[counter] >= 1, "{counter}: {totals:?}");
    }
    assert!(
        totals["credit_overrun"] + totals["credit_lies"] >= 1,
        "{totals:?}"
    );
}

#[test]
fn a_device_bandwidth_limit_throttles_a_connection_without_losing_a_byte() {
    if !kvm_available("a_device_bandwidth_limit_throttles_a_connection_without_losing_a_byte") {
        return;
    }
    // 256 KiB per 100 ms for both directions together: 2 MiB of echo must wait for refills.
    let limit = json!({"bandwidth": {"size": 262_144, "refill_time": 100}});
    let v = VsockVm::new(
        "vsock-echo",
        "probe.port=5000 probe.count=1 probe.secs=90",
        Some(json!({"rate_limiter": limit, "connection_rate_limiter": limit})),
    );
    let mut running = v.vm.spawn();
    running.wait_for_output("probe: vsock-echo ready", TIMEOUT);
    let stream = host_connect(&v.uds, PORT).unwrap();
    let data = pattern(MIB, 11);
    assert!(
        echo_round_trip(&stream, &data) == data,
        "every byte came back"
    );
    stream.shutdown(Shutdown::Write).unwrap();
    running.wait_for_output("probe: vsock-echo ok", TIMEOUT);
    drop(stream);
    let run = running.wait(TIMEOUT);
    run.assert_success();
    let totals = v.totals();
    // Whichever limiter blocked first (the device's or the connection's, both equal), its
    // timer brought the traffic back.
    assert!(totals["rate_limiter_event_count"] >= 1, "{totals:?}");
    assert_eq!(totals["tx_bytes_count"], MIB as u64, "{totals:?}");
    assert_eq!(totals["rx_bytes_count"], MIB as u64, "{totals:?}");
}
