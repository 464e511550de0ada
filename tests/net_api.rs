//! virtio-net through the API: a live PATCH of the firewall cuts a flow without a reboot,
//! `GET /network-interfaces/{id}/firewall` reports rules and counters, and the flow log (in
//! the VMM's Landlock layer) gets VPC-style lines.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use serde_json::{json, Value};

use common::api::{wait_for_socket, ApiClient};
use common::netns::{tsc_mhz, TapNetns};
use common::{kvm_available, TestVm};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Sends "hello" to the guest's UDP `port` from inside `ns`; the echo, if any.
fn ask(ns: &TapNetns, port: u16) -> Option<Vec<u8>> {
    ns.run(move || {
        let sock = UdpSocket::bind("10.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        sock.send_to(b"hello", ("10.0.0.2", port)).unwrap();
        let mut buf = [0u8; 64];
        sock.recv(&mut buf).map(|n| buf[..n].to_vec()).ok()
    })
    .join()
    .unwrap()
}

#[test]
fn patch_removing_an_allow_rule_cuts_the_flow_and_flow_logs_record_it() {
    let test = "patch_removing_an_allow_rule_cuts_the_flow_and_flow_logs_record_it";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let mut vm = TestVm::probe("net-echo", 1, 64);
    vm.config["boot-source"]["boot_args"] = json!(format!(
        "console=ttyS0 probe.run=net-echo probe.ip=10.0.0.2/24 probe.peer=10.0.0.1:9 \
         probe.port=5000 probe.secs=8 probe.tsc_mhz={}",
        tsc_mhz()
    ));
    let flow_log = vm.dir.path().join("flows.jsonl");
    let allow = json!({"action": "allow", "proto": "udp", "ports": "5000", "cidr": "10.0.0.0/24"});
    let firewall = json!({
        "allowed_ips": ["10.0.0.2/32"],
        "ingress": [allow],
        "flow_log": flow_log,
        "flow_log_interval_secs": 1
    });
    vm.config["network-interfaces"] = json!([{
        "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:0a:00:00:02",
        "firewall": firewall
    }]);
    let sock = vm.dir.path().join("api.sock");
    vm.args = vec![
        "--boot-timer".into(),
        "--api-sock".into(),
        sock.to_str().unwrap().into(),
    ];
    vm.netns = Some(ns.name.clone());
    let mut running = vm.spawn();
    running.wait_for_output("probe: net-echo ready", TIMEOUT);
    wait_for_socket(&sock, TIMEOUT);
    let mut api = ApiClient::connect(&sock);

    assert_eq!(
        ask(&ns, 5000).as_deref(),
        Some(&b"hello"[..]),
        "allowed before the PATCH"
    );
    let status = api.get("/network-interfaces/eth0/firewall");
    assert_eq!(status.status, 200, "{}", status.body);
    let v = status.json();
    assert_eq!(v["rule_hits"]["ingress"][0], 1, "{v}");

    let mut cut = firewall.clone();
    cut["ingress"] = json!([]);
    let r = api.patch(
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "firewall": cut}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(ask(&ns, 5000), None, "the flow is cut without a reboot");
    let v = api.get("/network-interfaces/eth0/firewall").json();
    assert_eq!(v["rules"]["ingress"], json!([]), "{v}");
    let r = api.patch(
        "/network-interfaces/eth1",
        json!({"iface_id": "eth1", "firewall": cut}),
    );
    assert_eq!(r.status, 400);

    let run = running.wait(TIMEOUT);
    run.assert_success();
    let lines: Vec<Value> = std::fs::read_to_string(&flow_log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let accepted = lines
        .iter()
        .find(|l| l["action"] == "ACCEPT" && l["dstport"] == 5000)
        .unwrap_or_else(|| panic!("no ACCEPT line for port 5000: {lines:?}"));
    for field in [
        "iface", "srcaddr", "dstaddr", "srcport", "dstport", "protocol", "packets", "bytes",
        "start", "end",
    ] {
        assert!(accepted.get(field).is_some(), "{field} missing: {accepted}");
    }
    assert_eq!(accepted["iface"], "eth0");
    assert_eq!(accepted["srcaddr"], "10.0.0.1");
    assert_eq!(accepted["protocol"], 17);
    assert!(
        lines
            .iter()
            .any(|l| l["action"] == "REJECT" && l["dstport"] == 5000),
        "the datagram after the PATCH is logged as rejected: {lines:?}"
    );
}

/// Kills the VMM when the test ends, whatever happens.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tap given through `PUT /network-interfaces` is opened there (a second PUT of the same
/// interface and tap still succeeds, a tap that cannot be opened is refused at once) and the
/// booted guest's traffic crosses it.
#[test]
fn a_tap_put_through_the_api_is_opened_at_put_and_carries_the_guests_traffic() {
    let test = "a_tap_put_through_the_api_is_opened_at_put_and_carries_the_guests_traffic";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut cmd = std::process::Command::new(common::palisade_bin());
    cmd.arg("--api-sock")
        .arg(&sock)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    common::netns::run_in(&mut cmd, &ns.name);
    let mut child = Child(cmd.spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    wait_for_socket(&sock, TIMEOUT);
    let mut api = ApiClient::connect(&sock);
    let r = api.put(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = api.put(
        "/boot-source",
        json!({"kernel_image_path": common::probe_path(), "boot_args": format!(
            "console=ttyS0 probe.run=net-echo probe.ip=10.0.0.2/24 probe.peer=10.0.0.1:9 \
             probe.port=5000 probe.secs=8 probe.tsc_mhz={}",
            tsc_mhz()
        )}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let eth0 = json!({"iface_id": "eth0", "host_dev_name": "tap0",
                      "guest_mac": "06:00:0a:00:00:02"});
    for attempt in ["first", "replacing"] {
        let r = api.put("/network-interfaces/eth0", eth0.clone());
        assert_eq!(r.status, 204, "{attempt} PUT: {}", r.body);
    }
    let r = api.put(
        "/network-interfaces/eth1",
        json!({"iface_id": "eth1", "host_dev_name": "lo"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("Open tap device failed"), "{}", r.body);
    let r = api.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) if line.contains("probe: net-echo ready") => break,
            Ok(_) => {}
            Err(e) => panic!("no 'probe: net-echo ready' line: {e}"),
        }
    }
    assert_eq!(ask(&ns, 5000).as_deref(), Some(&b"hello"[..]));
    assert_eq!(
        api.get("/vm/config").json()["network-interfaces"][0]["host_dev_name"],
        "tap0"
    );
}
