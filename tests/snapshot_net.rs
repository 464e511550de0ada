//! Snapshots of a VM with a network interface, each VMM a new process in a network namespace
//! the test creates (host side 10.0.0.1, guest 10.0.0.2). The probe sends UDP from port 40000
//! to the host's port 7000 (`net-tx`, allowed out), then counts datagrams to its port 40000
//! (`net-rx`): nothing may come in but replies of the tracked flow, and the host's port 7001
//! is denied by a rule added with PATCH after boot. The snapshot is taken while the guest
//! waits; after a load with `resume_vm` the host's reply still reaches the guest (the
//! connection table was restored), the 7001 datagram is still denied and counted on top of
//! the count before the snapshot (the patched rules and the counters were restored), and
//! `network_overrides` moves the clone to another tap.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::api::ApiClient;
use common::netns::{tsc_mhz, TapNetns, GUEST_MAC};
use common::{kvm_available, probe_path, ApiVm};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(60);
const GUEST: &str = "10.0.0.2:40000";

/// Out: UDP to the host's 7000 only. In: nothing but tracked replies.
fn firewall() -> Value {
    json!({
        "allowed_ips": ["10.0.0.2/32"],
        "egress": [{"action": "allow", "proto": "udp", "ports": "7000", "cidr": "10.0.0.1/32"}],
        "default_egress": "deny",
        "default_ingress": "deny"
    })
}

/// The firewall after the PATCH: the host's datagrams to port 40000 are denied by a rule.
fn patched_firewall() -> Value {
    let mut fw = firewall();
    fw["ingress"] =
        json!([{"action": "deny", "proto": "udp", "ports": "40000", "cidr": "10.0.0.1/32"}]);
    fw
}

/// A UDP socket at 10.0.0.1:`port` inside `ns`.
fn host_socket(ns: &TapNetns, port: u16) -> UdpSocket {
    let sock = ns
        .run(move || UdpSocket::bind(("10.0.0.1", port)).unwrap())
        .join()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    sock
}

/// The interface's live firewall status.
fn firewall_status(c: &mut ApiClient) -> Value {
    let r = c.get("/network-interfaces/eth0/firewall");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn rule_denied(status: &Value) -> u64 {
    status["counters"]["ingress"]["dropped"]["rule_deny"]
        .as_u64()
        .unwrap()
}

/// Waits until `done(status)` holds for the firewall's status; panics after TIMEOUT.
fn wait_for_status(c: &mut ApiClient, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let status = firewall_status(c);
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {TIMEOUT:?}: {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A saved guest waiting in `net-rx`, the denied count before the save, and the files.
struct Saved {
    _dir: tempfile::TempDir,
    state: PathBuf,
    mem: PathBuf,
    denied: u64,
}

/// Boots the probe on `ns`'s tap0, lets its flow to 7000 be answered once, has the PATCHed
/// rule deny one datagram from 7001, pauses and saves.
fn boot_flow_and_save(ns: &TapNetns) -> Saved {
    let dir = tempfile::tempdir().unwrap();
    let to_7000 = host_socket(ns, 7000);
    let from_7001 = host_socket(ns, 7001);
    let flags = ["--snapshot-dir", dir.path().to_str().unwrap()];
    let mut vm = ApiVm::start_in_netns(tempfile::tempdir().unwrap(), Some(&ns.name), &flags);
    let mut c = vm.client();
    let r = c.put(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let boot_args = format!(
        "console=ttyS0 probe.run=net-tx,net-rx probe.ip=10.0.0.2/24 probe.peer=10.0.0.1:7000 \
         probe.port=40000 probe.count=2 probe.size=32 probe.secs=300 probe.tsc_mhz={}",
        tsc_mhz()
    );
    let r = c.put(
        "/boot-source",
        json!({"kernel_image_path": probe_path(), "boot_args": boot_args}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put(
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": GUEST_MAC,
               "firewall": firewall()}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.wait_for_output("probe: net-rx ready", TIMEOUT);
    // The guest's datagrams reached the host: the flow is tracked.
    let mut buf = [0u8; 128];
    let (_, from) = to_7000.recv_from(&mut buf).unwrap();
    assert_eq!(from.to_string(), GUEST);
    let r = c.patch(
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "firewall": patched_firewall()}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let status = firewall_status(&mut c);
    assert_eq!(
        status["conntrack"]["flows"], 1,
        "the flow survives the PATCH: {status}"
    );
    // One datagram denied by the new rule, one reply through the flow (now answered).
    from_7001.send_to(b"denied-before", GUEST).unwrap();
    wait_for_status(&mut c, "rule deny", |s| rule_denied(s) == 1);
    let passed = |s: &Value| s["counters"]["ingress"]["passed_frames"].as_u64().unwrap();
    let before = passed(&firewall_status(&mut c));
    to_7000.send_to(b"reply-before", GUEST).unwrap();
    wait_for_status(&mut c, "the reply", |s| passed(s) > before);

    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let (state, mem) = (dir.path().join("state"), dir.path().join("mem"));
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    let denied = rule_denied(&firewall_status(&mut c));
    let out = vm.running.stdout();
    assert!(
        !out.contains("net-rx ok"),
        "the guest finished early:\n{out}"
    );
    vm.running.kill();
    Saved {
        _dir: dir,
        state,
        mem,
        denied,
    }
}

fn load_body(saved: &Saved, overrides: Value) -> Value {
    json!({"snapshot_path": saved.state,
           "mem_backend": {"backend_type": "File", "backend_path": saved.mem},
           "resume_vm": true,
           "network_overrides": overrides})
}

/// In the loaded clone: the datagram from 7001 is still denied and counted on top of the
/// saved count, and the host's replies on the flow reach the guest, whose `net-rx` ends with
/// both replies counted (the one before the snapshot and one after).
fn check_clone(clone: &mut ApiVm, ns: &TapNetns, saved: &Saved) {
    let mut c = clone.client();
    assert_eq!(c.get("/").json()["state"], "Running");
    let status = firewall_status(&mut c);
    assert_eq!(rule_denied(&status), saved.denied, "{status}");
    assert_eq!(status["conntrack"]["flows"], 1, "{status}");
    assert_eq!(
        status["rules"]["ingress"][0]["ports"], "40000",
        "the PATCHed rule: {status}"
    );
    let to_7000 = host_socket(ns, 7000);
    let from_7001 = host_socket(ns, 7001);
    from_7001.send_to(b"denied-after", GUEST).unwrap();
    wait_for_status(&mut c, "rule deny", |s| rule_denied(s) == saved.denied + 1);
    // Only the restored flow lets this in (the rules deny it, the default too). The first
    // datagram may wait for the host's ARP; send until the guest has counted it.
    let deadline = Instant::now() + TIMEOUT;
    while !clone.running.stdout().contains("probe: net-rx ok") {
        assert!(
            Instant::now() < deadline,
            "the reply did not reach the restored guest\n{}\n{}",
            clone.running.stdout(),
            clone.running.stderr()
        );
        to_7000.send_to(b"reply-after", GUEST).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    clone
        .running
        .wait_for_output("probe: net-rx ok received=2 ", TIMEOUT);
}

#[test]
fn an_established_flow_survives_a_load_in_a_new_process_and_blocked_traffic_stays_blocked() {
    let test =
        "an_established_flow_survives_a_load_in_a_new_process_and_blocked_traffic_stays_blocked";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let saved = boot_flow_and_save(&ns);
    assert_eq!(saved.denied, 1);
    let mut clone = ApiVm::start_in_netns(tempfile::tempdir().unwrap(), Some(&ns.name), &[]);
    let mut c = clone.client();
    let r = c.put("/snapshot/load", load_body(&saved, json!([])));
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    check_clone(&mut clone, &ns, &saved);
    let log = clone.running.stderr();
    let loaded = log.lines().find(|l| l.contains("Snapshot loaded"));
    println!("64 MiB probe guest with a firewalled interface: {loaded:?}");
    clone.running.kill();
}

#[test]
fn network_overrides_move_the_clone_to_another_tap_and_bad_overrides_are_refused() {
    let test = "network_overrides_move_the_clone_to_another_tap_and_bad_overrides_are_refused";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let saved = boot_flow_and_save(&ns);
    // The clone's namespace has no tap0, only tap1.
    let Some(other) = TapNetns::create_with_tap(test, "tap1") else {
        return;
    };
    let mut clone = ApiVm::start_in_netns(tempfile::tempdir().unwrap(), Some(&other.name), &[]);
    let mut c = clone.client();
    let r = c.put(
        "/snapshot/load",
        load_body(
            &saved,
            json!([{"iface_id": "eth9", "host_dev_name": "tap1"}]),
        ),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.fault().contains("Unknown Network Device"),
        "{}",
        r.fault()
    );
    assert!(r.fault().contains("'eth9'"), "{}", r.fault());
    // A host device that cannot be opened as a tap (not one; as root a missing name would
    // be created, so a device of another kind stands for it).
    let r = c.put(
        "/snapshot/load",
        load_body(&saved, json!([{"iface_id": "eth0", "host_dev_name": "lo"}])),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.fault().contains("Open tap device failed"),
        "{}",
        r.fault()
    );
    assert_eq!(c.get("/").json()["state"], "Not started");
    let r = c.put(
        "/snapshot/load",
        load_body(
            &saved,
            json!([{"iface_id": "eth0", "host_dev_name": "bad/name"}]),
        ),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(c.get("/").json()["state"], "Not started");
    // Nothing was half-restored: the same VMM takes the good override.
    let r = c.put(
        "/snapshot/load",
        load_body(
            &saved,
            json!([{"iface_id": "eth0", "host_dev_name": "tap1"}]),
        ),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let config = c.get("/vm/config").json();
    assert_eq!(
        config["network-interfaces"][0]["host_dev_name"], "tap1",
        "{config}"
    );
    check_clone(&mut clone, &other, &saved);
    clone.running.kill();
}
