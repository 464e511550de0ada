//! Security-group rules with connection tracking: replies, first match, ICMP, fragments,
//! offloaded frames, and the bounded table.

mod common;

use std::time::Instant;

use common::*;
use palisade_firewall::{Direction, DropReason, Verdict};

const SSH_ONLY: &str = r#"{"allowed_ips": ["172.16.0.2/32", "fd00::2/128"],
    "ingress": [{"action": "allow", "proto": "tcp", "ports": "22", "cidr": "0.0.0.0/0"}]}"#;

#[test]
fn inbound_connection_to_an_allowed_port_passes_and_others_do_not() {
    let now = Instant::now();
    let mut fw = firewall(SSH_ONLY, now);
    assert_eq!(
        fw.ingress(&to_guest_tcp(REMOTE_IP, (40_000, 22), SYN), now),
        Verdict::Pass
    );
    assert_eq!(
        fw.ingress(&to_guest_tcp(REMOTE_IP, (40_000, 23), SYN), now),
        Verdict::Drop(DropReason::DefaultDeny)
    );
    // The guest's answers and the rest of the connection ride on the tracked flow.
    assert_eq!(
        fw.egress(&guest_tcp(REMOTE_IP, (22, 40_000), SYN_ACK), now),
        Verdict::Pass
    );
    assert_eq!(
        fw.ingress(&to_guest_tcp(REMOTE_IP, (40_000, 22), ACK), now),
        Verdict::Pass
    );
    assert_eq!(
        serde_json::to_value(fw.status()).unwrap()["rule_hits"]["ingress"][0],
        1,
        "one new flow matched rule 0"
    );
    assert_eq!(fw.tracked_flows(), 1);
}

#[test]
fn replies_to_guest_initiated_flows_pass_and_strangers_do_not() {
    let now = Instant::now();
    let mut fw = firewall(SSH_ONLY, now);
    assert_eq!(
        fw.egress(&guest_tcp(REMOTE_IP, (50_000, 443), SYN), now),
        Verdict::Pass
    );
    assert_eq!(
        fw.ingress(&to_guest_tcp(REMOTE_IP, (443, 50_000), SYN_ACK), now),
        Verdict::Pass
    );
    // Same ports from another host, or to another guest port: not the flow.
    let stranger = to_guest_tcp([198, 51, 100, 1], (443, 50_000), SYN_ACK);
    assert_eq!(
        fw.ingress(&stranger, now),
        Verdict::Drop(DropReason::DefaultDeny)
    );
    assert_eq!(
        fw.ingress(&to_guest_tcp(REMOTE_IP, (443, 50_001), ACK), now),
        Verdict::Drop(DropReason::DefaultDeny)
    );
    assert_eq!(
        fw.egress(&guest_udp(REMOTE_IP, (5353, 53)), now),
        Verdict::Pass
    );
    assert_eq!(
        fw.ingress(&to_guest_udp(REMOTE_IP, (53, 5353)), now),
        Verdict::Pass
    );
}

#[test]
fn first_matching_rule_wins_and_deny_reasons_differ() {
    let now = Instant::now();
    let mut fw = firewall(
        r#"{"allowed_ips": ["172.16.0.2/32"], "default_egress": "deny",
            "egress": [{"action": "deny", "proto": "tcp", "ports": "25"},
                       {"action": "allow", "proto": "tcp", "ports": "1-1024", "cidr": "203.0.113.0/24"}]}"#,
        now,
    );
    assert_eq!(
        fw.egress(&guest_tcp(REMOTE_IP, (1000, 25), SYN), now),
        Verdict::Drop(DropReason::RuleDeny)
    );
    assert_eq!(
        fw.egress(&guest_tcp(REMOTE_IP, (1000, 80), SYN), now),
        Verdict::Pass
    );
    assert_eq!(
        fw.egress(&guest_tcp([198, 51, 100, 1], (1000, 80), SYN), now),
        Verdict::Drop(DropReason::DefaultDeny)
    );
    assert_eq!(
        fw.counters()
            .dropped(Direction::Egress, DropReason::RuleDeny),
        1
    );
    assert_eq!(
        fw.counters()
            .dropped(Direction::Egress, DropReason::DefaultDeny),
        1
    );
}

#[test]
fn icmp_echo_is_tracked_by_identifier() {
    let now = Instant::now();
    let mut fw = firewall(SSH_ONLY, now);
    let request = icmp_v4(
        (GUEST_MAC, HOST_MAC),
        (GUEST_IP, REMOTE_IP),
        (8, 0),
        [0, 7, 0, 1],
        b"ping",
    );
    assert_eq!(fw.egress(&request, now), Verdict::Pass);
    let reply = icmp_v4(
        (HOST_MAC, GUEST_MAC),
        (REMOTE_IP, GUEST_IP),
        (0, 0),
        [0, 7, 0, 1],
        b"ping",
    );
    assert_eq!(fw.ingress(&reply, now), Verdict::Pass);
    let other_id = icmp_v4(
        (HOST_MAC, GUEST_MAC),
        (REMOTE_IP, GUEST_IP),
        (0, 0),
        [0, 8, 0, 1],
        b"ping",
    );
    assert_eq!(
        fw.ingress(&other_id, now),
        Verdict::Drop(DropReason::DefaultDeny)
    );
    let inbound_ping = icmp_v4(
        (HOST_MAC, GUEST_MAC),
        (REMOTE_IP, GUEST_IP),
        (8, 0),
        [0, 9, 0, 1],
        b"",
    );
    assert_eq!(
        fw.ingress(&inbound_ping, now),
        Verdict::Drop(DropReason::DefaultDeny)
    );
    fw.update(&config(
        r#"{"allowed_ips": ["172.16.0.2/32"],
            "ingress": [{"action": "allow", "proto": "icmp", "icmp_type": 8}]}"#,
    ))
    .unwrap();
    assert_eq!(fw.ingress(&inbound_ping, now), Verdict::Pass);
    let answer = icmp_v4(
        (GUEST_MAC, HOST_MAC),
        (GUEST_IP, REMOTE_IP),
        (0, 0),
        [0, 9, 0, 1],
        b"",
    );
    assert_eq!(fw.egress(&answer, now), Verdict::Pass);
}

#[test]
fn icmp_errors_about_a_tracked_flow_pass() {
    let now = Instant::now();
    let mut fw = firewall(SSH_ONLY, now);
    let outbound = guest_udp(REMOTE_IP, (5000, 9999));
    assert_eq!(fw.egress(&outbound, now), Verdict::Pass);
    // "Port unreachable" quoting the guest's datagram (IP header + 8 bytes).
    let quoted = &outbound[ETH_LEN..ETH_LEN + IPV4_LEN + 8];
    let unreachable = icmp_v4(
        (HOST_MAC, GUEST_MAC),
        ([198, 51, 100, 7], GUEST_IP),
        (3, 3),
        [0; 4],
        quoted,
    );
    assert_eq!(fw.ingress(&unreachable, now), Verdict::Pass);
    let unrelated = guest_udp(REMOTE_IP, (5001, 9999));
    let about_nothing = &unrelated[ETH_LEN..ETH_LEN + IPV4_LEN + 8];
    let stray = icmp_v4(
        (HOST_MAC, GUEST_MAC),
        ([198, 51, 100, 7], GUEST_IP),
        (3, 3),
        [0; 4],
        about_nothing,
    );
    assert_eq!(
        fw.ingress(&stray, now),
        Verdict::Drop(DropReason::DefaultDeny)
    );
}

#[test]
fn fragments_after_the_first_are_dropped_unless_allowed() {
    let now = Instant::now();
    let mut fw = firewall(SSH_ONLY, now);
    let mut first = guest_udp(REMOTE_IP, (5000, 53));
    set_ipv4_fragment(&mut first, 0, true);
    assert_eq!(
        fw.egress(&first, now),
        Verdict::Pass,
        "first fragments are filtered normally"
    );
    let mut later = guest_udp(REMOTE_IP, (5000, 53));
    set_ipv4_fragment(&mut later, 185, false);
    assert_eq!(fw.egress(&later, now), Verdict::Drop(DropReason::Fragment));
    let mut inbound_first = to_guest_tcp(REMOTE_IP, (1, 80), SYN);
    set_ipv4_fragment(&mut inbound_first, 0, true);
    assert_eq!(
        fw.ingress(&inbound_first, now),
        Verdict::Drop(DropReason::DefaultDeny)
    );
    fw.update(&config(
        r#"{"allowed_ips": ["172.16.0.2/32"], "allow_fragments": true}"#,
    ))
    .unwrap();
    assert_eq!(fw.egress(&later, now), Verdict::Pass);
    assert_eq!(
        fw.counters()
            .dropped(Direction::Egress, DropReason::Fragment),
        1
    );
}

#[test]
fn offloaded_frames_are_judged_on_headers_and_counted_whole() {
    let now = Instant::now();
    let mut fw = firewall(SSH_ONLY, now);
    // A TSO frame: 64 KiB of payload behind the headers, total length beyond what is shown.
    let mut big = guest_tcp(REMOTE_IP, (50_000, 443), ACK);
    let header_len = big.len();
    big.resize(header_len + 65_000, 0xab);
    let total_len = (big.len() - ETH_LEN) as u16;
    set_ipv4_total_len(&mut big, total_len);
    assert_eq!(fw.egress(&big, now), Verdict::Pass);
    assert_eq!(
        fw.egress_headers(&big[..header_len], 65_000 + header_len, now),
        Verdict::Pass
    );
    let status = serde_json::to_value(fw.status()).unwrap();
    assert_eq!(
        status["counters"]["egress"]["passed_bytes"],
        2 * (header_len + 65_000)
    );
    // An inbound GSO frame for a flow that is not allowed is still refused.
    let mut inbound = to_guest_tcp(REMOTE_IP, (1, 3389), ACK);
    inbound.resize(inbound.len() + 60_000, 0);
    let total_len = (inbound.len() - ETH_LEN) as u16;
    set_ipv4_total_len(&mut inbound, total_len);
    assert_eq!(
        fw.ingress(&inbound, now),
        Verdict::Drop(DropReason::DefaultDeny)
    );
}

#[test]
fn ipv6_flows_are_tracked_like_ipv4() {
    let now = Instant::now();
    let mut fw = firewall(SSH_ONLY, now);
    let syn = tcp_v6(
        (GUEST_MAC, HOST_MAC),
        (GUEST_IP6, REMOTE_IP6),
        (50_000, 443),
        SYN,
    );
    assert_eq!(fw.egress(&syn, now), Verdict::Pass);
    let reply = tcp_v6(
        (HOST_MAC, GUEST_MAC),
        (REMOTE_IP6, GUEST_IP6),
        (443, 50_000),
        SYN_ACK,
    );
    assert_eq!(fw.ingress(&reply, now), Verdict::Pass);
    let inbound = tcp_v6(
        (HOST_MAC, GUEST_MAC),
        (REMOTE_IP6, GUEST_IP6),
        (40_000, 22),
        SYN,
    );
    assert_eq!(
        fw.ingress(&inbound, now),
        Verdict::Drop(DropReason::DefaultDeny),
        "rule 0 is IPv4 only"
    );
}

#[test]
fn full_table_drops_new_flows_while_established_ones_keep_working() {
    let now = Instant::now();
    let mut fw = firewall(
        r#"{"allowed_ips": ["172.16.0.2/32"], "conntrack_max": 100}"#,
        now,
    );
    assert_eq!(
        fw.egress(&guest_tcp(REMOTE_IP, (40_000, 443), SYN), now),
        Verdict::Pass
    );
    assert_eq!(
        fw.ingress(&to_guest_tcp(REMOTE_IP, (443, 40_000), SYN_ACK), now),
        Verdict::Pass
    );
    let mut refused = 0;
    // Ports above the DHCP ones: a guest never sends to port 68.
    for port in 1_001..=2_000u16 {
        let verdict = fw.egress(&guest_udp(REMOTE_IP, (6000, port)), now);
        if verdict == Verdict::Drop(DropReason::ConntrackFull) {
            refused += 1;
        }
    }
    assert_eq!(fw.tracked_flows(), 100);
    assert_eq!(refused, 901);
    assert_eq!(
        fw.counters()
            .dropped(Direction::Egress, DropReason::ConntrackFull),
        901
    );
    assert_eq!(
        fw.ingress(&to_guest_tcp(REMOTE_IP, (443, 40_000), ACK), now),
        Verdict::Pass
    );
    assert_eq!(
        fw.egress(&guest_tcp(REMOTE_IP, (40_000, 443), ACK), now),
        Verdict::Pass
    );
    // Unanswered UDP expires after 30 s; the established connection stays.
    fw.expire_and_log(secs(now, 31)).unwrap();
    assert_eq!(fw.tracked_flows(), 1);
    assert_eq!(
        fw.egress(&guest_udp(REMOTE_IP, (6000, 5)), secs(now, 31)),
        Verdict::Pass
    );
}

#[test]
fn closed_tcp_flows_expire_quickly() {
    let now = Instant::now();
    let mut fw = firewall(SSH_ONLY, now);
    fw.egress(&guest_tcp(REMOTE_IP, (40_000, 443), SYN), now);
    fw.ingress(&to_guest_tcp(REMOTE_IP, (443, 40_000), SYN_ACK), now);
    fw.egress(&guest_tcp(REMOTE_IP, (40_000, 443), FIN_ACK), now);
    fw.ingress(&to_guest_tcp(REMOTE_IP, (443, 40_000), FIN_ACK), now);
    fw.expire_and_log(secs(now, 5)).unwrap();
    assert_eq!(fw.tracked_flows(), 1);
    fw.expire_and_log(secs(now, 11)).unwrap();
    assert_eq!(fw.tracked_flows(), 0);
    assert_eq!(
        fw.ingress(&to_guest_tcp(REMOTE_IP, (443, 40_000), ACK), secs(now, 11)),
        Verdict::Drop(DropReason::DefaultDeny)
    );
    // A reset closes at once too, and a new SYN on the closed 5-tuple is a new flow.
    fw.egress(&guest_tcp(REMOTE_IP, (40_001, 443), SYN), now);
    fw.ingress(&to_guest_tcp(REMOTE_IP, (443, 40_001), RST), now);
    assert_eq!(
        fw.egress(&guest_tcp(REMOTE_IP, (40_001, 443), SYN), now),
        Verdict::Pass
    );
    assert_eq!(fw.counters().flows_created, 3);
}
