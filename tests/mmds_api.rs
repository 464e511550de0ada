//! The MMDS data store and its configuration through the API socket, the config file and
//! `--metadata`, answered with Firecracker's status codes and fault messages (read from its
//! `rpc_interface.rs`, `mmds/data_store.rs` and `vmm_config/mmds.rs`), and Palisade's
//! `mmds-config` extensions (`hop_limit`, `rate_limiter`). These tests prove the
//! orchestrator's side; tests/mmds_linux.rs the guest's.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::api::{wait_for_socket, ApiClient};
use common::netns::{net_totals, net_vm, TapNetns};
use common::{kvm_available, probe_path, ApiVm, TestVm};

const TIMEOUT: Duration = Duration::from_secs(60);
const BAD_CONFIGURATION: i32 = 152;

const NOT_INITIALIZED: &str = "MMDS error: The MMDS data store is not initialized.";
const DOES_NOT_FIT: &str = "MMDS limit exceeded error: The MMDS patch request doesn't fit.";
const UNKNOWN_IFACE: &str = "MMMDS config error: The list of network interface IDs provided \
    contains at least one ID that does not correspond to any existing network interface.";
const POST_BOOT: &str = "The requested operation is not supported after starting the microVM.";

/// The metadata an orchestrator hands a guest, EC2-style.
fn metadata() -> Value {
    json!({"latest": {"meta-data": {"ami-id": "ami-12345678", "instance-id": "i-1"}}})
}

/// Boots the probe guest's `idle` scenario through the API and waits until it runs.
fn boot_idle(vm: &mut ApiVm, c: &mut ApiClient) {
    let r = c.put(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 32}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put(
        "/boot-source",
        json!({"kernel_image_path": probe_path(), "boot_args": "console=ttyS0 probe.run=idle"}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.wait_for_output("probe: idle ok", TIMEOUT);
}

#[test]
fn mmds_put_patch_get_answer_as_firecracker_before_boot() {
    let vm = ApiVm::start(&["--mmds-size-limit", "128"]);
    let mut c = vm.client();
    // An empty store answers {}; PATCH needs a PUT first.
    let r = c.get("/mmds");
    assert_eq!((r.status, r.json()), (200, json!({})));
    let r = c.patch("/mmds", json!({"a": 1}));
    assert_eq!((r.status, r.fault()), (400, NOT_INITIALIZED.to_string()));
    let r = c.put("/mmds", metadata());
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(c.get("/mmds").json(), metadata());
    // RFC 7396: objects merge, null removes, other values replace.
    let r = c.patch(
        "/mmds",
        json!({"latest": {"meta-data": {"instance-id": null, "local-ipv4": "10.0.0.2"}}}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        c.get("/mmds").json(),
        json!({"latest": {"meta-data": {"ami-id": "ami-12345678", "local-ipv4": "10.0.0.2"}}})
    );
    // Not JSON, or an unknown sub-path: 400.
    let r = c.request("PUT", "/mmds", Some("{not json"));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = c.put("/mmds/other", json!({}));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = c.request("GET", "/mmds", Some("{}"));
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn mmds_over_the_size_limit_is_413_and_the_store_is_unchanged() {
    let vm = ApiVm::start(&["--mmds-size-limit", "64"]);
    let mut c = vm.client();
    let r = c.put("/mmds", json!({"k": "v"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let big = "x".repeat(64);
    let r = c.put("/mmds", json!({ "k": big }));
    assert_eq!((r.status, r.fault()), (413, DOES_NOT_FIT.to_string()));
    let r = c.patch("/mmds", json!({ "other": big }));
    assert_eq!((r.status, r.fault()), (413, DOES_NOT_FIT.to_string()));
    assert_eq!(c.get("/mmds").json(), json!({"k": "v"}));
    // Exactly at the limit fits (the compact JSON length is measured, as Firecracker does).
    let exact = json!({ "k": "y".repeat(64 - r#"{"k":""}"#.len()) });
    assert_eq!(exact.to_string().len(), 64);
    let r = c.put("/mmds", exact.clone());
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(c.get("/mmds").json(), exact);
}

#[test]
fn deeply_nested_mmds_bodies_are_refused_and_the_api_keeps_answering() {
    let vm = ApiVm::start(&[]);
    let mut c = vm.client();
    for open in ["[", "{\"a\":"] {
        let body = open.repeat(40_000 / open.len());
        for method in ["PUT", "PATCH"] {
            let r = c.request(method, "/mmds", Some(&body));
            assert_eq!(r.status, 400, "{method}: {}", r.body);
            assert!(r.fault().contains("recursion limit"), "{}", r.fault());
        }
    }
    assert_eq!(c.get("/mmds").status, 200);
}

#[test]
fn mmds_config_refusals_carry_firecrackers_messages() {
    let vm = ApiVm::start(&[]);
    let mut c = vm.client();
    let refused = [
        (json!({"network_interfaces": ["eth0"]}), UNKNOWN_IFACE),
        (
            json!({"network_interfaces": []}),
            "MMMDS config error: The list of network interface IDs that allow forwarding MMDS \
             requests is empty.",
        ),
        (
            json!({"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}),
            "MMMDS config error: The MMDS IPv4 address is not link local.",
        ),
        (
            json!({"network_interfaces": ["eth0"], "ipv4_address": "169.254.0.1"}),
            "MMMDS config error: The MMDS IPv4 address is not link local.",
        ),
    ];
    for (body, message) in refused {
        let r = c.put("/mmds/config", body.clone());
        assert_eq!((r.status, r.fault().as_str()), (400, message), "{body}");
    }
    for body in [
        json!({"version": "V2"}),
        json!({"version": "V3", "network_interfaces": ["eth0"]}),
        json!({"network_interfaces": ["eth0"], "ipv4_address": ""}),
        json!({"network_interfaces": ["eth0"], "unknown": 1}),
    ] {
        let r = c.put("/mmds/config", body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.body);
    }
    assert_eq!(c.get("/vm/config").json()["mmds-config"], json!(null));
}

#[test]
fn mmds_config_is_pre_boot_only_and_the_store_serves_after_boot() {
    let test = "mmds_config_is_pre_boot_only_and_the_store_serves_after_boot";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let metrics = out.path().join("metrics.jsonl");
    let mut vm = ApiVm::start_in_netns(
        tempfile::tempdir().unwrap(),
        Some(&ns.name),
        &["--metrics-path", metrics.to_str().unwrap()],
    );
    let mut c = vm.client();
    let r = c.put(
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "host_dev_name": "tap0"}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put(
        "/mmds/config",
        json!({"version": "V1", "network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2"}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    // Without a version: V2, Palisade's default; the address defaults to 169.254.169.254.
    let r = c.put("/mmds/config", json!({"network_interfaces": ["eth0"]}));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        c.get("/vm/config").json()["mmds-config"],
        json!({"version": "V2", "network_interfaces": ["eth0"],
               "ipv4_address": "169.254.169.254", "imds_compat": false, "hop_limit": 1,
               "rate_limiter": {"ops": {"size": 100, "refill_time": 2000}}})
    );
    // Palisade's extensions: refused with Firecracker's prefix, then shown as set.
    let refused = [
        (
            json!({"network_interfaces": ["eth0"], "hop_limit": 0}),
            "MMMDS config error: The MMDS hop limit 0 is out of range: give a value between 1 \
             and 255.",
        ),
        (
            json!({"network_interfaces": ["eth0"], "hop_limit": 256}),
            "MMMDS config error: The MMDS hop limit 256 is out of range: give a value between \
             1 and 255.",
        ),
        (
            json!({"network_interfaces": ["eth0"],
                   "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}),
            "MMMDS config error: The MMDS rate limiter counts requests: give an `ops` bucket; \
             `bandwidth` is not supported.",
        ),
    ];
    for (body, message) in refused {
        let r = c.put("/mmds/config", body.clone());
        assert_eq!((r.status, r.fault().as_str()), (400, message), "{body}");
    }
    for body in [
        json!({"network_interfaces": ["eth0"], "hop_limit": -1}),
        json!({"network_interfaces": ["eth0"], "hop_limit": "64"}),
        json!({"network_interfaces": ["eth0"], "rate_limiter": {"ops": {"size": 1}}}),
    ] {
        let r = c.put("/mmds/config", body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.body);
    }
    let r = c.put(
        "/mmds/config",
        json!({"network_interfaces": ["eth0"], "hop_limit": 64,
               "rate_limiter": {"ops": {"size": 10, "refill_time": 1000, "one_time_burst": 5}}}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let shown = c.get("/vm/config").json()["mmds-config"].clone();
    assert_eq!(shown["hop_limit"], 64);
    assert_eq!(
        shown["rate_limiter"],
        json!({"ops": {"size": 10, "refill_time": 1000, "one_time_burst": 5}})
    );
    let r = c.put("/mmds", metadata());
    assert_eq!(r.status, 204, "{}", r.body);
    boot_idle(&mut vm, &mut c);
    let r = c.put("/mmds/config", json!({"network_interfaces": ["eth0"]}));
    assert_eq!((r.status, r.fault().as_str()), (400, POST_BOOT));
    assert_eq!(c.get("/mmds").json(), metadata());
    let r = c.patch("/mmds", json!({"latest": {"user-data": "hello"}}));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(c.get("/mmds").json()["latest"]["user-data"], "hello");
    let r = c.put("/mmds", json!({"replaced": true}));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(c.get("/mmds").json(), json!({"replaced": true}));
    // The interface's metrics group has every counter of its responder.
    let r = c.put("/actions", json!({"action_type": "FlushMetrics"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    for key in [
        "mmds_frames_in",
        "mmds_frames_out",
        "mmds_other_drops",
        "mmds_answers_ok",
        "mmds_answers_unauthorized",
        "mmds_answers_error",
        "mmds_rate_limited",
        "mmds_syn_refused",
        "mmds_deadline_aborts",
        "mmds_queue_full",
        "mmds_fragments",
        "mmds_frames_too_big",
    ] {
        assert!(
            last["net_eth0"][key].is_u64(),
            "{key}: {}",
            last["net_eth0"]
        );
    }
    vm.running
        .wait_for_log("MMDS V1 configured", Duration::from_secs(10));
}

#[test]
fn after_boot_a_vm_that_never_had_mmds_answers_not_initialized() {
    let test = "after_boot_a_vm_that_never_had_mmds_answers_not_initialized";
    if !kvm_available(test) {
        return;
    }
    let mut vm = ApiVm::start(&[]);
    let mut c = vm.client();
    boot_idle(&mut vm, &mut c);
    let r = c.get("/mmds");
    assert_eq!((r.status, r.fault()), (400, NOT_INITIALIZED.to_string()));
    let r = c.put("/mmds", metadata());
    assert_eq!((r.status, r.fault()), (400, NOT_INITIALIZED.to_string()));
    let r = c.patch("/mmds", metadata());
    assert_eq!((r.status, r.fault()), (400, NOT_INITIALIZED.to_string()));
}

#[test]
fn metadata_file_and_config_file_mmds_config_fill_the_store_and_the_vm_config() {
    let test = "metadata_file_and_config_file_mmds_config_fill_the_store_and_the_vm_config";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let mut vm = TestVm::probe("idle", 1, 32);
    vm.config["network-interfaces"] = json!([{"iface_id": "eth0", "host_dev_name": "tap0"}]);
    vm.config["mmds-config"] = json!({"network_interfaces": ["eth0"], "imds_compat": true});
    let sock = vm.dir.path().join("api.sock");
    let file = vm.dir.path().join("metadata.json");
    std::fs::write(&file, serde_json::to_string_pretty(&metadata()).unwrap()).unwrap();
    vm.args = vec![
        "--api-sock".into(),
        sock.to_string_lossy().into_owned(),
        "--metadata".into(),
        file.to_string_lossy().into_owned(),
    ];
    vm.netns = Some(ns.name.clone());
    let mut running = vm.spawn();
    wait_for_socket(&sock, TIMEOUT);
    running.wait_for_output("probe: idle ok", TIMEOUT);
    let mut c = ApiClient::connect(&sock);
    assert_eq!(c.get("/mmds").json(), metadata());
    assert_eq!(
        c.get("/vm/config").json()["mmds-config"],
        json!({"version": "V2", "network_interfaces": ["eth0"],
               "ipv4_address": "169.254.169.254", "imds_compat": true, "hop_limit": 1,
               "rate_limiter": {"ops": {"size": 100, "refill_time": 2000}}})
    );
}

#[test]
fn bad_metadata_files_and_mmds_config_sections_stop_the_vmm_as_bad_configuration() {
    // Checked before the kernel is opened or KVM is touched: no guest is needed.
    let dir = tempfile::tempdir().unwrap();
    let too_big = dir.path().join("big.json");
    std::fs::write(&too_big, json!({"k": "x".repeat(100)}).to_string()).unwrap();
    let not_json = dir.path().join("bad.json");
    std::fs::write(&not_json, "{").unwrap();
    let sock = dir.path().join("api.sock");
    let sock = sock.to_str().unwrap();
    let cases: [(Vec<&str>, &str); 3] = [
        (
            vec![
                "--mmds-size-limit",
                "64",
                "--metadata",
                too_big.to_str().unwrap(),
            ],
            DOES_NOT_FIT,
        ),
        (
            vec!["--metadata", not_json.to_str().unwrap()],
            "is not valid JSON",
        ),
        (
            vec!["--metadata", "/nonexistent/metadata.json"],
            "Cannot read the metadata file",
        ),
    ];
    for (args, needle) in cases {
        let out = std::process::Command::new(common::palisade_bin())
            .args(["--api-sock", sock])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(BAD_CONFIGURATION),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let vm = TestVm::new(json!({
        "boot-source": {"kernel_image_path": "/nonexistent/kernel"},
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
        "mmds-config": {"network_interfaces": ["eth1"]},
    }));
    let run = vm.run(TIMEOUT);
    assert_eq!(run.status.code(), Some(BAD_CONFIGURATION), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("Configuring MMDS failed: The list of network interface IDs"),
        "{}",
        run.stderr
    );
}

/// The probe's `mmds-get` (a token PUT, then a GET with it, each its own connection) against
/// MMDS V2 on eth0 with Palisade's `extra` mmds-config fields.
fn mmds_get_vm(ns: &TapNetns, extra: Value) -> TestVm {
    let mut vm = net_vm(ns, "mmds-get", "probe.peer=169.254.169.254:80", None);
    let mut config = json!({"network_interfaces": ["eth0"]});
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    vm.config["mmds-config"] = config;
    let data = vm.dir.path().join("metadata.json");
    std::fs::write(&data, metadata().to_string()).unwrap();
    vm.args
        .extend(["--metadata".into(), data.to_str().unwrap().into()]);
    vm
}

#[test]
fn answers_leave_with_the_configured_hop_limit_and_each_request_gets_one_audit_record_no_log_line()
{
    let test =
        "answers_leave_with_the_configured_hop_limit_and_each_request_gets_one_audit_record_no_log_line";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let mut vm = mmds_get_vm(&ns, json!({"hop_limit": 7}));
    // With the API up, MMDS reads go to the --audit-log file (and then not to the log).
    let audit_path = vm.dir.path().join("audit.jsonl");
    let sock = vm.dir.path().join("api.sock");
    vm.args.retain(|a| a != "--no-api");
    vm.args.extend([
        "--api-sock".into(),
        sock.to_str().unwrap().into(),
        "--audit-log".into(),
        audit_path.to_str().unwrap().into(),
    ]);
    let run = vm.run(TIMEOUT);
    run.assert_success();
    let line = run.assert_probe_ok("mmds-get");
    for ttl in ["syn_ack_ttl=7", "min_ttl=7", "max_ttl=7"] {
        assert!(line.contains(ttl), "{line}");
    }
    let audit: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("mmds request: "))
        .collect();
    assert!(audit.is_empty(), "{}", run.stderr);
    // Never a value of the store.
    assert!(!run.stderr.contains("i-1"), "{}", run.stderr);
    let m = net_totals(&vm);
    assert_eq!(m.get("mmds_answers_ok"), Some(&2), "{m:?}");
    // The audit log holds the same two reads as records, and never a value or the token.
    let text = std::fs::read_to_string(&audit_path).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["event"] == "mmds")
        .collect();
    assert_eq!(records.len(), 2, "{text}");
    assert_eq!(records[0]["method"], "PUT", "{text}");
    assert_eq!(records[0]["path"], "/latest/api/token", "{text}");
    assert_eq!(records[0]["status"], 200, "{text}");
    assert!(records[0].get("token_age_s").is_none(), "{text}");
    assert_eq!(records[1]["method"], "GET", "{text}");
    assert_eq!(
        records[1]["path"], "/latest/meta-data/instance-id",
        "{text}"
    );
    assert_eq!(records[1]["iface"], "eth0", "{text}");
    assert_eq!(records[1]["token_age_s"], 0, "{text}");
    assert!(!text.contains("i-1"), "{text}");
    let hex_run = text
        .split(|c: char| !c.is_ascii_hexdigit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(
        hex_run < 32,
        "something token-like in the audit log: {text}"
    );
}

#[test]
fn a_connection_over_the_vm_request_limit_is_dropped_counted_and_logged() {
    let test = "a_connection_over_the_vm_request_limit_is_dropped_counted_and_logged";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    // One request an hour: the token PUT is answered, the GET's SYN is dropped.
    let limit = json!({"ops": {"size": 1, "refill_time": 3_600_000}});
    let vm = mmds_get_vm(&ns, json!({"rate_limiter": limit}));
    let run = vm.run(TIMEOUT);
    run.assert_success();
    assert!(
        run.stdout.contains("probe: mmds-get fail get-refused"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("mmds: rate limit reached on eth0: connection dropped (1 drops so far)"),
        "{}",
        run.stderr
    );
    let m = net_totals(&vm);
    assert_eq!(m.get("mmds_answers_ok"), Some(&1), "{m:?}");
    assert!(m.get("mmds_rate_limited").is_some_and(|&n| n >= 1), "{m:?}");
    assert_eq!(m.get("mmds_syn_refused").copied().unwrap_or(0), 0, "{m:?}");
}
