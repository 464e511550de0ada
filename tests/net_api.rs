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
