//! The IP layer as the wire has it: lengths that disagree with the frame, transport headers
//! beyond the datagram, source routing, and fragments judged by their IP header.

mod common;

use std::time::Instant;

use common::*;
use palisade_firewall::{Direction, DropReason, Verdict};

const OPEN: &str =
    r#"{"allowed_ips": ["172.16.0.2/32", "fd00::2/128"], "default_ingress": "allow"}"#;

#[test]
fn ip_length_beyond_the_frame_is_dropped_and_counted() {
    let now = Instant::now();
    let mut fw = firewall(OPEN, now);
    let mut frame = guest_tcp(REMOTE_IP, (40_000, 443), SYN);
    set_ipv4_total_len(&mut frame, 1_500);
    let mismatch = Verdict::Drop(DropReason::LengthMismatch);
    assert_eq!(fw.egress(&frame, now), mismatch);
    assert_eq!(fw.ingress(&frame, now), mismatch);
    let mut frame6 = tcp_v6((GUEST_MAC, HOST_MAC), (GUEST_IP6, REMOTE_IP6), (1, 2), SYN);
    set_ipv6_payload_len(&mut frame6, 400);
    assert_eq!(fw.egress(&frame6, now), mismatch);
    assert_eq!(
        fw.counters()
            .dropped(Direction::Egress, DropReason::LengthMismatch),
        2
    );
}

#[test]
fn bytes_after_the_datagram_beyond_ethernet_padding_are_dropped() {
    let now = Instant::now();
    let mut fw = firewall(OPEN, now);
    let mut frame = guest_tcp(REMOTE_IP, (40_000, 443), SYN);
    frame.resize(frame.len() + 200, 0x41);
    assert_eq!(
        fw.egress(&frame, now),
        Verdict::Drop(DropReason::LengthMismatch)
    );
    let mut frame6 = udp_v6((GUEST_MAC, HOST_MAC), (GUEST_IP6, REMOTE_IP6), (1, 2));
    frame6.extend_from_slice(&[0; 100]);
    assert_eq!(
        fw.egress(&frame6, now),
        Verdict::Drop(DropReason::LengthMismatch)
    );
}

#[test]
fn ethernet_padding_after_the_datagram_passes() {
    let now = Instant::now();
    let mut fw = firewall(OPEN, now);
    // 14 + 20 + 8 + 7 bytes, padded to the 60-byte minimum frame.
    let mut frame = guest_udp(REMOTE_IP, (5000, 53));
    assert!(frame.len() < 60);
    frame.resize(60, 0);
    assert_eq!(fw.egress(&frame, now), Verdict::Pass);
    assert_eq!(fw.ingress(&frame, now), Verdict::Pass);
}

#[test]
fn transport_header_beyond_the_ip_length_is_malformed() {
    let now = Instant::now();
    let mut fw = firewall(OPEN, now);
    // The IP datagram ends 4 bytes into the UDP header; the frame's padding holds the rest.
    let mut frame = guest_udp(REMOTE_IP, (5000, 53));
    set_ipv4_total_len(&mut frame, (IPV4_LEN + 4) as u16);
    frame.resize(60, 0);
    assert_eq!(fw.egress(&frame, now), Verdict::Drop(DropReason::Malformed));
    let mut tcp = guest_tcp(REMOTE_IP, (1, 2), SYN);
    set_ipv4_total_len(&mut tcp, (IPV4_LEN + 16) as u16);
    tcp.truncate(60);
    assert_eq!(fw.egress(&tcp, now), Verdict::Drop(DropReason::Malformed));
}

#[test]
fn offloaded_header_prefix_is_checked_against_the_full_length() {
    let now = Instant::now();
    let mut fw = firewall(OPEN, now);
    let mut frame = guest_tcp(REMOTE_IP, (40_000, 443), ACK);
    let headers = frame.len();
    set_ipv4_total_len(&mut frame, 60_000);
    assert_eq!(
        fw.egress_headers(&frame, ETH_LEN + 60_000, now),
        Verdict::Pass
    );
    assert_eq!(
        fw.egress_headers(&frame[..headers], ETH_LEN + 50_000, now),
        Verdict::Drop(DropReason::LengthMismatch)
    );
}

/// A guest UDP datagram with IPv4 options (a multiple of 4 bytes).
fn udp_with_options(options: &[u8]) -> Vec<u8> {
    let plain = guest_udp(REMOTE_IP, (5000, 53));
    let mut frame = plain[..ETH_LEN + IPV4_LEN].to_vec();
    frame.extend_from_slice(options);
    frame.extend_from_slice(&plain[ETH_LEN + IPV4_LEN..]);
    let header_words = (IPV4_LEN + options.len()) / 4;
    frame[ETH_LEN] = 0x40 | header_words as u8;
    let total = (frame.len() - ETH_LEN) as u16;
    set_ipv4_total_len(&mut frame, total);
    frame
}

#[test]
fn ipv4_source_routing_is_dropped_and_counted() {
    let now = Instant::now();
    let mut fw = firewall(OPEN, now);
    let source_route = Verdict::Drop(DropReason::SourceRoute);
    // Loose and strict source route with one hop: type, length 7, pointer 4, address; EOL.
    for kind in [131, 137] {
        let frame = udp_with_options(&[kind, 7, 4, 192, 0, 2, 1, 0]);
        assert_eq!(fw.egress(&frame, now), source_route, "option {kind}");
        assert_eq!(fw.ingress(&frame, now), source_route, "option {kind}");
    }
    // Behind a NOP.
    let frame = udp_with_options(&[1, 131, 7, 4, 192, 0, 2, 1]);
    assert_eq!(fw.egress(&frame, now), source_route);
    assert_eq!(fw.counters().dropped_total(DropReason::SourceRoute), 5);
    // Record route does not change the path: it passes.
    let record = udp_with_options(&[7, 7, 4, 0, 0, 0, 0, 0]);
    assert_eq!(fw.egress(&record, now), Verdict::Pass);
    // An option running past the header is malformed.
    let broken = udp_with_options(&[1, 1, 7, 9]);
    assert_eq!(
        fw.egress(&broken, now),
        Verdict::Drop(DropReason::Malformed)
    );
}

/// A guest TCP SYN over IPv6 behind one routing header of `routing_type` with `segments_left`.
fn tcp_v6_routed(routing_type: u8, segments_left: u8) -> Vec<u8> {
    let plain = tcp_v6(
        (GUEST_MAC, HOST_MAC),
        (GUEST_IP6, REMOTE_IP6),
        (40_000, 80),
        SYN,
    );
    let transport_at = ETH_LEN + 40;
    let mut frame = plain[..transport_at].to_vec();
    frame[ETH_LEN + 6] = 43;
    // Next header TCP, length 2 (24 bytes: one address after the 8-byte start).
    frame.extend_from_slice(&[6, 2, routing_type, segments_left, 0, 0, 0, 0]);
    frame.extend_from_slice(&REMOTE_IP6);
    frame.extend_from_slice(&plain[transport_at..]);
    let payload = (frame.len() - transport_at) as u16;
    set_ipv6_payload_len(&mut frame, payload);
    frame
}

#[test]
fn ipv6_routing_headers_that_route_are_dropped_and_counted() {
    let now = Instant::now();
    let mut fw = firewall(OPEN, now);
    let source_route = Verdict::Drop(DropReason::SourceRoute);
    assert_eq!(fw.egress(&tcp_v6_routed(0, 0), now), source_route, "type 0");
    assert_eq!(fw.egress(&tcp_v6_routed(0, 1), now), source_route);
    assert_eq!(fw.egress(&tcp_v6_routed(4, 1), now), source_route, "SRH");
    assert_eq!(fw.ingress(&tcp_v6_routed(2, 1), now), source_route);
    assert_eq!(fw.counters().dropped_total(DropReason::SourceRoute), 4);
    assert_eq!(fw.egress(&tcp_v6_routed(4, 0), now), Verdict::Pass);
}

#[test]
fn allowed_fragments_still_pass_the_rules_on_their_ip_header() {
    let now = Instant::now();
    let mut fw = firewall(
        r#"{"allowed_ips": ["172.16.0.2/32"], "allow_fragments": true,
            "default_egress": "deny",
            "egress": [{"action": "allow", "proto": "udp", "ports": "53", "cidr": "8.8.8.8/32"},
                       {"action": "allow", "proto": "udp", "cidr": "192.0.2.0/24"}]}"#,
        now,
    );
    let mut later = guest_udp(REMOTE_IP, (5000, 53));
    set_ipv4_fragment(&mut later, 185, false);
    assert_eq!(
        fw.egress(&later, now),
        Verdict::Drop(DropReason::DefaultDeny),
        "no rule allows UDP to 203.0.113.9"
    );
    let mut to_dns = udp_v4((GUEST_MAC, HOST_MAC), (GUEST_IP, [8, 8, 8, 8]), (5000, 53));
    set_ipv4_fragment(&mut to_dns, 185, false);
    assert_eq!(
        fw.egress(&to_dns, now),
        Verdict::Drop(DropReason::DefaultDeny),
        "a port rule cannot judge a fragment without ports"
    );
    let mut allowed = udp_v4((GUEST_MAC, HOST_MAC), (GUEST_IP, [192, 0, 2, 7]), (5000, 9));
    set_ipv4_fragment(&mut allowed, 185, false);
    assert_eq!(fw.egress(&allowed, now), Verdict::Pass);
    let mut spoofed = udp_v4(
        (GUEST_MAC, HOST_MAC),
        ([10, 0, 0, 9], [192, 0, 2, 7]),
        (1, 9),
    );
    set_ipv4_fragment(&mut spoofed, 185, false);
    assert_eq!(fw.egress(&spoofed, now), Verdict::Drop(DropReason::SpoofIp));
    // RFC 1858: a TCP fragment at offset 8 bytes rewrites the first fragment's flags.
    let mut overlap = tcp_v4(
        (GUEST_MAC, HOST_MAC),
        (GUEST_IP, [192, 0, 2, 7]),
        (1, 2),
        ACK,
    );
    set_ipv4_fragment(&mut overlap, 1, false);
    assert_eq!(
        fw.egress(&overlap, now),
        Verdict::Drop(DropReason::Fragment)
    );
}
