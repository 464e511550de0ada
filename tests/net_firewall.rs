//! virtio-net and its firewall under the real VMM and KVM: the probe guest on a real tap in a
//! network namespace the test creates, the host side at 10.0.0.1 (std sockets in that
//! namespace), the guest at 10.0.0.2 with MAC 06:00:0a:00:00:02.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use serde_json::json;

use common::netns::{net_totals, net_vm, TapNetns};
use common::{kvm_available, GuestRun, TestVm};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Collects UDP payloads arriving at 10.0.0.1:`port` in `ns` for `secs` (or until `until`).
fn udp_sink(
    ns: &TapNetns,
    port: u16,
    secs: u64,
    until: Option<&'static [u8]>,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = ns.run(move || {
        let sock = UdpSocket::bind(("10.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                got.push(buf[..n].to_vec());
                if until.is_some_and(|u| u == &buf[..n]) {
                    break;
                }
            }
        }
        got
    });
    rx.recv().unwrap();
    handle
}

fn run_ok(vm: &TestVm, scenario: &str) -> (GuestRun, String) {
    let run = vm.run(TIMEOUT);
    run.assert_success();
    let detail = run.assert_probe_ok(scenario);
    (run, detail)
}

#[test]
fn spoofed_frames_are_dropped_and_counted_while_honest_traffic_flows() {
    let test = "spoofed_frames_are_dropped_and_counted_while_honest_traffic_flows";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let sink = udp_sink(&ns, 7000, 30, Some(b"probe-end"));
    let fw = json!({"allowed_ips": ["10.0.0.2/32"]});
    let vm = net_vm(
        &ns,
        "net-spoof",
        "probe.peer=10.0.0.1:7000 probe.count=5",
        Some(fw),
    );
    let (_, detail) = run_ok(&vm, "net-spoof");
    assert_eq!(detail, "sent=26");
    let got = sink.join().unwrap();
    assert_eq!(
        got,
        vec![b"probe-end".to_vec()],
        "only the honest datagram arrives"
    );
    let m = net_totals(&vm);
    assert_eq!(m["fw_spoof_mac"], 5, "{m:?}");
    assert_eq!(m["tx_spoofed_mac_count"], 5, "{m:?}");
    assert_eq!(m["fw_spoof_ip"], 5, "{m:?}");
    assert_eq!(m["fw_spoof_arp"], 5, "{m:?}");
    assert_eq!(
        m["fw_rogue_dhcp_ra"], 10,
        "DHCP offers and router advertisements: {m:?}"
    );
    assert_eq!(m["fw_egress_drops"], 25, "{m:?}");
    // The ARP request for the peer and the honest datagram went out.
    assert!(m["tx_packets_count"] >= 2, "{m:?}");
}

#[test]
fn egress_rules_allow_one_port_and_deny_another() {
    let test = "egress_rules_allow_one_port_and_deny_another";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let fw = json!({
        "allowed_ips": ["10.0.0.2/32"],
        "egress": [
            {"action": "deny", "proto": "udp", "ports": "7001", "cidr": "10.0.0.0/24"},
            {"action": "allow", "proto": "udp", "ports": "7000", "cidr": "10.0.0.1/32"}
        ],
        "default_egress": "deny"
    });
    for (port, expect) in [(7000u16, 20usize), (7001, 0)] {
        let sink = udp_sink(&ns, port, 8, None);
        let params = format!("probe.peer=10.0.0.1:{port} probe.count=20 probe.size=100");
        let vm = net_vm(&ns, "net-tx", &params, Some(fw.clone()));
        let (_, detail) = run_ok(&vm, "net-tx");
        assert!(detail.starts_with("sent=20 "), "{detail}");
        let got = sink.join().unwrap();
        assert_eq!(got.len(), expect, "port {port}");
        let m = net_totals(&vm);
        let denied = if expect == 0 { 20 } else { 0 };
        assert_eq!(m["fw_rule_deny"], denied, "port {port}: {m:?}");
    }
}

#[test]
fn ingress_rules_and_conntrack_let_replies_through() {
    let test = "ingress_rules_and_conntrack_let_replies_through";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    // Inbound: only UDP 5000 from the host network. Outbound: everything (default).
    let fw = json!({
        "allowed_ips": ["10.0.0.2/32"],
        "ingress": [{"action": "allow", "proto": "udp", "ports": "5000", "cidr": "10.0.0.0/24"}]
    });
    let vm = net_vm(
        &ns,
        "net-echo",
        "probe.peer=10.0.0.1:9 probe.port=5000 probe.secs=6",
        Some(fw),
    );
    let mut running = vm.spawn();
    running.wait_for_output("probe: net-echo ready", TIMEOUT);
    let answers = ns
        .run(|| {
            let sock = UdpSocket::bind("10.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buf = [0u8; 64];
            let mut ask = |port: u16| {
                sock.send_to(b"hello", ("10.0.0.2", port)).unwrap();
                sock.recv(&mut buf).map(|n| buf[..n].to_vec()).ok()
            };
            (ask(5000), ask(5001), ask(5000))
        })
        .join()
        .unwrap();
    assert_eq!(
        answers.0.as_deref(),
        Some(&b"hello"[..]),
        "allowed port echoes"
    );
    assert_eq!(answers.1, None, "port 5001 is not allowed in");
    assert_eq!(answers.2.as_deref(), Some(&b"hello"[..]));
    let run = running.wait(TIMEOUT);
    run.assert_success();
    let detail = run.assert_probe_ok("net-echo");
    assert!(detail.contains("udp=2"), "{detail}");
    let m = net_totals(&vm);
    assert!(m["fw_default_deny"] >= 1, "{m:?}");
}
