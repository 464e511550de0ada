//! Live updates (PATCH) and the status document (GET .../firewall).

mod common;

use std::time::Instant;

use common::*;
use palisade_firewall::{DropReason, FirewallError, Verdict};

const WEB: &str = r#"{"allowed_ips": ["172.16.0.2/32"],
    "ingress": [{"action": "allow", "proto": "tcp", "ports": "22"},
                {"action": "allow", "proto": "tcp", "ports": "80"}]}"#;

#[test]
fn removing_an_allow_rule_cuts_the_flows_it_allowed() {
    let now = Instant::now();
    let mut fw = firewall(WEB, now);
    assert_eq!(
        fw.ingress(&to_guest_tcp(REMOTE_IP, (40_000, 22), SYN), now),
        Verdict::Pass
    );
    assert_eq!(
        fw.ingress(&to_guest_tcp(REMOTE_IP, (40_001, 80), SYN), now),
        Verdict::Pass
    );
    fw.egress(&guest_tcp(REMOTE_IP, (22, 40_000), SYN_ACK), now);
    fw.egress(&guest_tcp(REMOTE_IP, (80, 40_001), SYN_ACK), now);
    fw.update(&config(
        r#"{"allowed_ips": ["172.16.0.2/32"],
            "ingress": [{"action": "allow", "proto": "tcp", "ports": "80"}]}"#,
    ))
    .unwrap();
    assert_eq!(fw.tracked_flows(), 1);
    assert_eq!(fw.counters().flows_cut_by_update, 1);
    assert_eq!(
        fw.ingress(&to_guest_tcp(REMOTE_IP, (40_000, 22), ACK), now),
        Verdict::Drop(DropReason::DefaultDeny)
    );
    assert_eq!(
        fw.ingress(&to_guest_tcp(REMOTE_IP, (40_001, 80), ACK), now),
        Verdict::Pass
    );
}

#[test]
fn guest_flows_from_an_address_no_longer_allowed_are_cut() {
    let now = Instant::now();
    let mut fw = firewall(WEB, now);
    assert_eq!(
        fw.egress(&guest_tcp(REMOTE_IP, (40_000, 443), SYN), now),
        Verdict::Pass
    );
    fw.update(&config(r#"{"allowed_ips": ["172.16.0.3/32"]}"#))
        .unwrap();
    assert_eq!(fw.tracked_flows(), 0);
    assert_eq!(
        fw.egress(&guest_tcp(REMOTE_IP, (40_000, 443), ACK), now),
        Verdict::Drop(DropReason::SpoofIp)
    );
}

#[test]
fn a_rejected_update_changes_nothing() {
    let now = Instant::now();
    let mut fw = firewall(WEB, now);
    let before = fw.config().clone();
    let invalid = config(r#"{"ingress": [{"action": "allow", "proto": "icmp", "ports": "1"}]}"#);
    assert!(matches!(fw.update(&invalid), Err(FirewallError::Config(_))));
    let resized = config(r#"{"conntrack_max": 10}"#);
    let err = fw.update(&resized).unwrap_err();
    assert!(
        err.to_string()
            .contains("fixed when the interface is created"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let unopenable = config(&format!(
        r#"{{"flow_log": "{}/missing/dir/flows.jsonl"}}"#,
        dir.path().display()
    ));
    assert!(matches!(
        fw.update(&unopenable),
        Err(FirewallError::FlowLog(_))
    ));
    assert_eq!(fw.config(), &before);
    assert_eq!(
        fw.ingress(&to_guest_tcp(REMOTE_IP, (40_000, 22), SYN), now),
        Verdict::Pass
    );
}

#[test]
fn status_reports_rules_hits_and_every_counter() {
    let now = Instant::now();
    let mut fw = firewall(WEB, now);
    fw.ingress(&to_guest_tcp(REMOTE_IP, (40_000, 80), SYN), now);
    fw.ingress(&to_guest_tcp(REMOTE_IP, (40_000, 81), SYN), now);
    fw.egress(
        &udp_v4((OTHER_MAC, HOST_MAC), (GUEST_IP, HOST_IP), (1, 2)),
        now,
    );
    fw.egress(&[0u8; 5], now);
    let status = serde_json::to_value(fw.status()).unwrap();
    assert_eq!(status["iface_id"], "eth0");
    assert_eq!(status["rules"]["ingress"][1]["ports"], "80");
    assert_eq!(status["rules"]["default_ingress"], "deny");
    assert_eq!(status["rule_hits"]["ingress"], serde_json::json!([0, 1]));
    assert_eq!(status["counters"]["dropped"]["default_deny"], 1);
    assert_eq!(status["counters"]["dropped"]["spoof_mac"], 1);
    assert_eq!(status["counters"]["dropped"]["malformed"], 1);
    assert_eq!(status["counters"]["ingress"]["passed_frames"], 1);
    for reason in [
        "spoof_mac",
        "spoof_ip",
        "spoof_arp",
        "rogue_dhcp_ra",
        "rule_deny",
        "default_deny",
        "conntrack_full",
        "fragment",
        "malformed",
    ] {
        assert!(
            status["counters"]["egress"]["dropped"][reason].is_u64(),
            "{reason}"
        );
    }
    assert_eq!(status["conntrack"]["flows"], 1);
    assert_eq!(status["conntrack"]["max"], 65_536);
    assert_eq!(status["flow_log"]["enabled"], false);
}
