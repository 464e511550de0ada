//! Flow-log lines: one per flow per interval and when it ends, rejected traffic aggregated.

mod common;

use std::path::Path;
use std::time::Instant;

use common::*;
use palisade_firewall::Firewall;
use serde_json::Value;

fn logged_firewall(dir: &Path, now: Instant) -> Firewall {
    let json = format!(
        r#"{{"allowed_ips": ["172.16.0.2/32"], "flow_log": "{}", "flow_log_interval_secs": 10,
            "ingress": [{{"action": "deny", "proto": "tcp", "ports": "23"}}]}}"#,
        dir.join("flows.jsonl").display()
    );
    firewall(&json, now)
}

fn lines(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("flows.jsonl")).expect("flow log");
    text.lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect()
}

#[test]
fn long_flows_are_logged_every_interval_and_when_they_end() {
    let dir = tempfile::tempdir().unwrap();
    let now = Instant::now();
    let mut fw = logged_firewall(dir.path(), now);
    fw.egress(&guest_tcp(REMOTE_IP, (40_000, 443), SYN), now);
    fw.ingress(
        &to_guest_tcp(REMOTE_IP, (443, 40_000), SYN_ACK),
        secs(now, 1),
    );
    fw.expire_and_log(secs(now, 5)).unwrap();
    assert!(lines(dir.path()).is_empty(), "nothing before the interval");
    fw.expire_and_log(secs(now, 10)).unwrap();
    fw.egress(&guest_tcp(REMOTE_IP, (40_000, 443), FIN_ACK), secs(now, 12));
    fw.ingress(
        &to_guest_tcp(REMOTE_IP, (443, 40_000), FIN_ACK),
        secs(now, 12),
    );
    fw.expire_and_log(secs(now, 23)).unwrap();
    let records = lines(dir.path());
    assert_eq!(records.len(), 2, "{records:?}");
    let first = &records[0];
    assert_eq!(first["iface"], "eth0");
    assert_eq!(first["srcaddr"], "172.16.0.2");
    assert_eq!(first["dstaddr"], "203.0.113.9");
    assert_eq!(first["srcport"], 40_000);
    assert_eq!(first["dstport"], 443);
    assert_eq!(first["protocol"], 6);
    assert_eq!(first["packets"], 2);
    assert_eq!(first["action"], "ACCEPT");
    assert!(first["start"].as_u64().unwrap() <= first["end"].as_u64().unwrap());
    assert_eq!(records[1]["packets"], 2, "the closing window");
    assert_eq!(fw.tracked_flows(), 0);
    assert_eq!(
        serde_json::to_value(fw.status()).unwrap()["flow_log"]["records_written"],
        2
    );
}

#[test]
fn rejected_traffic_is_aggregated_per_flow() {
    let dir = tempfile::tempdir().unwrap();
    let now = Instant::now();
    let mut fw = logged_firewall(dir.path(), now);
    for _ in 0..3 {
        fw.ingress(&to_guest_tcp(REMOTE_IP, (40_000, 23), SYN), now);
    }
    fw.ingress(&to_guest_udp(REMOTE_IP, (40_000, 161)), now);
    fw.expire_and_log(secs(now, 10)).unwrap();
    let mut records = lines(dir.path());
    records.sort_by_key(|record| record["protocol"].as_u64());
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["action"], "REJECT");
    assert_eq!(records[0]["packets"], 3);
    assert_eq!(records[0]["srcaddr"], "203.0.113.9");
    assert_eq!(records[0]["dstport"], 23);
    assert_eq!(records[0]["direction"], "ingress");
    assert_eq!(records[1]["protocol"], 17);
}
