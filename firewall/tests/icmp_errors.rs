//! ICMP errors about a tracked flow pass without rules only when they are what they claim:
//! addressed to the quoted packet's sender, quoting a complete header, and no longer than
//! RFC 1812 / RFC 4443 allow.

mod common;

use std::time::Instant;

use common::*;
use palisade_firewall::{DropReason, Firewall, Verdict};

const DNS_ONLY: &str = r#"{"allowed_ips": ["172.16.0.2/32", "fd00::2/128"],
                           "default_egress": "deny", "default_ingress": "deny",
                           "egress": [{"action": "allow", "proto": "udp", "ports": "53"}]}"#;

const ROUTER: [u8; 4] = [198, 51, 100, 1];
const ROUTER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DEFAULT_DENY: Verdict = Verdict::Drop(DropReason::DefaultDeny);

/// A firewall with a tracked DNS flow 172.16.0.2:40000 -> 203.0.113.9:53 (and its IPv6 twin),
/// and the guest's datagrams of that flow, from their IP header on.
fn tracked_dns() -> (Firewall, Instant, Vec<u8>, Vec<u8>) {
    let now = Instant::now();
    let mut fw = firewall(DNS_ONLY, now);
    let query = guest_udp(REMOTE_IP, (40_000, 53));
    assert_eq!(fw.egress(&query, now), Verdict::Pass);
    let query6 = udp_v6((GUEST_MAC, HOST_MAC), (GUEST_IP6, REMOTE_IP6), (40_000, 53));
    assert_eq!(fw.egress(&query6, now), Verdict::Pass);
    (
        fw,
        now,
        query[ETH_LEN..].to_vec(),
        query6[ETH_LEN..].to_vec(),
    )
}

fn unreachable(src: [u8; 4], dst: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    icmp_v4((HOST_MAC, GUEST_MAC), (src, dst), (3, 3), [0; 4], quoted)
}

fn unreachable6(src: [u8; 16], dst: [u8; 16], quoted: &[u8]) -> Vec<u8> {
    icmp_v6((HOST_MAC, GUEST_MAC), (src, dst), (1, 4), [0; 4], quoted)
}

#[test]
fn error_about_a_tracked_flow_to_its_sender_passes() {
    let (mut fw, now, quoted, quoted6) = tracked_dns();
    assert_eq!(
        fw.ingress(&unreachable(ROUTER, GUEST_IP, &quoted), now),
        Verdict::Pass
    );
    assert_eq!(
        fw.ingress(&unreachable6(ROUTER6, GUEST_IP6, &quoted6), now),
        Verdict::Pass
    );
}

#[test]
fn error_addressed_to_someone_else_than_the_quoted_sender_is_judged_by_the_rules() {
    let (mut fw, now, quoted, quoted6) = tracked_dns();
    let elsewhere = unreachable(ROUTER, [172, 16, 0, 3], &quoted);
    assert_eq!(fw.ingress(&elsewhere, now), DEFAULT_DENY);
    let broadcast = unreachable(ROUTER, [255; 4], &quoted);
    assert_eq!(fw.ingress(&broadcast, now), DEFAULT_DENY);
    let mut other6 = GUEST_IP6;
    other6[15] = 3;
    assert_eq!(
        fw.ingress(&unreachable6(ROUTER6, other6, &quoted6), now),
        DEFAULT_DENY
    );
}

#[test]
fn oversized_errors_are_judged_by_the_rules() {
    let (mut fw, now, quoted, quoted6) = tracked_dns();
    // The quoted datagram followed by a kilobyte of tenant-chosen bytes: a data channel.
    let mut stuffed = quoted.clone();
    stuffed.resize(quoted.len() + 1_000, 0x5a);
    assert_eq!(
        fw.ingress(&unreachable(ROUTER, GUEST_IP, &stuffed), now),
        DEFAULT_DENY
    );
    let mut at_limit = quoted.clone();
    at_limit.resize(576 - 28, 0);
    assert_eq!(
        fw.ingress(&unreachable(ROUTER, GUEST_IP, &at_limit), now),
        Verdict::Pass
    );
    let mut stuffed6 = quoted6.clone();
    stuffed6.resize(1_300, 0x5a);
    assert_eq!(
        fw.ingress(&unreachable6(ROUTER6, GUEST_IP6, &stuffed6), now),
        DEFAULT_DENY
    );
}

#[test]
fn error_quoting_an_incomplete_header_is_judged_by_the_rules() {
    let (mut fw, now, quoted, quoted6) = tracked_dns();
    // The IPv4 header and only the ports of the UDP header: RFC 792 quotes 8 bytes.
    let short = unreachable(ROUTER, GUEST_IP, &quoted[..IPV4_LEN + 4]);
    assert_eq!(fw.ingress(&short, now), DEFAULT_DENY);
    let short6 = unreachable6(ROUTER6, GUEST_IP6, &quoted6[..40 + 4]);
    assert_eq!(fw.ingress(&short6, now), DEFAULT_DENY);
}

#[test]
fn guest_error_about_an_inbound_flow_goes_only_to_the_remote_sender() {
    let now = Instant::now();
    let mut fw = firewall(
        r#"{"allowed_ips": ["172.16.0.2/32"], "default_egress": "deny",
            "ingress": [{"action": "allow", "proto": "udp", "ports": "5353"}]}"#,
        now,
    );
    let inbound = to_guest_udp(REMOTE_IP, (7000, 5353));
    assert_eq!(fw.ingress(&inbound, now), Verdict::Pass);
    let quoted = &inbound[ETH_LEN..];
    let reply = icmp_v4(
        (GUEST_MAC, HOST_MAC),
        (GUEST_IP, REMOTE_IP),
        (3, 3),
        [0; 4],
        quoted,
    );
    assert_eq!(fw.egress(&reply, now), Verdict::Pass);
    let elsewhere = icmp_v4(
        (GUEST_MAC, HOST_MAC),
        (GUEST_IP, [192, 0, 2, 77]),
        (3, 3),
        [0; 4],
        quoted,
    );
    assert_eq!(fw.egress(&elsewhere, now), DEFAULT_DENY);
}
