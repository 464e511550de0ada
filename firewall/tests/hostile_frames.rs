//! Truncated, malformed and unusual frames: never a panic, dropped as `malformed` (or as
//! `fragment`), in both directions.

mod common;

use std::time::Instant;

use common::*;
use palisade_firewall::{Direction, DropReason, Firewall, Verdict};
use proptest::prelude::*;

const OPEN: &str =
    r#"{"allowed_ips": ["172.16.0.2/32", "fd00::2/128"], "default_ingress": "allow"}"#;

fn both_directions(fw: &mut Firewall, frame: &[u8], now: Instant) -> (Verdict, Verdict) {
    (fw.egress(frame, now), fw.ingress(frame, now))
}

fn assert_malformed_both_ways(frame: &[u8], what: &str) {
    let now = Instant::now();
    let mut fw = firewall(OPEN, now);
    let malformed = Verdict::Drop(DropReason::Malformed);
    assert_eq!(
        both_directions(&mut fw, frame, now),
        (malformed, malformed),
        "{what}"
    );
}

#[test]
fn short_ethernet_frames_are_malformed() {
    let frame = guest_udp(HOST_IP, (1, 2));
    for len in 0..ETH_LEN {
        assert_malformed_both_ways(&frame[..len], &format!("{len} bytes"));
    }
    // An Ethernet header announcing IPv4 with nothing behind it.
    assert_malformed_both_ways(&frame[..ETH_LEN], "no IP header");
    assert_malformed_both_ways(&frame[..ETH_LEN + 19], "19-byte IP header");
}

#[test]
fn bad_ipv4_header_length_is_malformed() {
    let mut frame = guest_udp(HOST_IP, (1, 2));
    frame[ETH_LEN] = 0x44;
    assert_malformed_both_ways(&frame, "IHL 4");
    frame[ETH_LEN] = 0x4f;
    assert_malformed_both_ways(&frame, "IHL 15 past the end");
    frame[ETH_LEN] = 0x65;
    assert_malformed_both_ways(&frame, "version 6 in an IPv4 ether type");
    let mut short_total = guest_udp(HOST_IP, (1, 2));
    short_total[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&10u16.to_be_bytes());
    assert_malformed_both_ways(&short_total, "total length below the header");
}

#[test]
fn bad_tcp_data_offset_is_malformed() {
    let mut frame = guest_tcp(REMOTE_IP, (1, 2), SYN);
    frame[ETH_LEN + IPV4_LEN + 12] = 0x40;
    assert_malformed_both_ways(&frame, "data offset 4");
    frame[ETH_LEN + IPV4_LEN + 12] = 0xf0;
    assert_malformed_both_ways(&frame, "data offset 15 past the end");
    let whole = guest_tcp(REMOTE_IP, (1, 2), SYN);
    assert_malformed_both_ways(&whole[..whole.len() - 1], "19-byte TCP header");
}

#[test]
fn truncated_transport_and_arp_are_malformed() {
    let udp = guest_udp(HOST_IP, (1, 2));
    assert_malformed_both_ways(&udp[..ETH_LEN + IPV4_LEN + 7], "7-byte UDP header");
    let ping = icmp_v4(
        (GUEST_MAC, HOST_MAC),
        (GUEST_IP, REMOTE_IP),
        (8, 0),
        [0; 4],
        &[],
    );
    assert_malformed_both_ways(&ping[..ping.len() - 1], "7-byte ICMP header");
    let request = arp(GUEST_MAC, 1, (GUEST_MAC, GUEST_IP), HOST_IP);
    assert_malformed_both_ways(&request[..request.len() - 1], "short ARP");
    let mut not_ethernet = request.clone();
    not_ethernet[ETH_LEN + 4] = 8;
    assert_malformed_both_ways(&not_ethernet, "ARP with 8-byte hardware addresses");
}

#[test]
fn vlan_tagged_frames_are_malformed() {
    for tpid in [[0x81, 0x00], [0x88, 0xa8], [0x91, 0x00]] {
        let plain = guest_udp(HOST_IP, (1, 2));
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&tpid);
        tagged.extend_from_slice(&[0x00, 0x05]);
        tagged.extend_from_slice(&plain[12..]);
        assert_malformed_both_ways(&tagged, &format!("TPID {tpid:02x?}"));
    }
}

/// A guest TCP SYN over IPv6 with the given extension headers (kind, 8-byte body) in between.
fn tcp_v6_with_extensions(extensions: &[(u8, [u8; 8])]) -> Vec<u8> {
    let plain = tcp_v6(
        (GUEST_MAC, HOST_MAC),
        (GUEST_IP6, REMOTE_IP6),
        (40_000, 80),
        SYN,
    );
    let transport_at = ETH_LEN + 40;
    let mut frame = plain[..transport_at].to_vec();
    if let Some((first, _)) = extensions.first() {
        frame[ETH_LEN + 6] = *first;
    }
    for (index, (_, body)) in extensions.iter().enumerate() {
        let mut header = *body;
        header[0] = extensions.get(index + 1).map_or(6, |(next, _)| *next);
        header[1] = 0;
        frame.extend_from_slice(&header);
    }
    frame.extend_from_slice(&plain[transport_at..]);
    let payload_len = (frame.len() - transport_at) as u16;
    set_ipv6_payload_len(&mut frame, payload_len);
    frame
}

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTIONS: u8 = 60;

#[test]
fn ipv6_extension_headers_are_walked_with_a_bound() {
    let now = Instant::now();
    let mut fw = firewall(OPEN, now);
    let common = tcp_v6_with_extensions(&[
        (HOP_BY_HOP, [0; 8]),
        // A segment routing header with no segments left: it routes nowhere.
        (ROUTING, [0, 0, 4, 0, 0, 0, 0, 0]),
        (DEST_OPTIONS, [0; 8]),
    ]);
    assert_eq!(fw.egress(&common, now), Verdict::Pass);
    let eight = tcp_v6_with_extensions(&[(DEST_OPTIONS, [0; 8]); 8]);
    assert_eq!(fw.egress(&eight, now), Verdict::Pass);
    let nine = tcp_v6_with_extensions(&[(DEST_OPTIONS, [0; 8]); 9]);
    assert_eq!(fw.egress(&nine, now), Verdict::Drop(DropReason::Malformed));
    let truncated = &common[..ETH_LEN + 40 + 4];
    assert_eq!(
        fw.egress(truncated, now),
        Verdict::Drop(DropReason::Malformed)
    );
    // A fragment header: offset 0 with more fragments is filtered normally, later ones dropped.
    let first = tcp_v6_with_extensions(&[(FRAGMENT, [0, 0, 0, 1, 0, 0, 0, 7])]);
    assert_eq!(fw.egress(&first, now), Verdict::Pass);
    let later = tcp_v6_with_extensions(&[(FRAGMENT, [0, 0, 0x05, 0x00, 0, 0, 0, 7])]);
    assert_eq!(fw.egress(&later, now), Verdict::Drop(DropReason::Fragment));
    assert_eq!(
        fw.counters()
            .dropped(Direction::Egress, DropReason::Malformed),
        2
    );
}

#[test]
fn guest_mac_check_comes_after_parsing_the_ethernet_header() {
    let now = Instant::now();
    let mut fw = firewall(OPEN, now);
    let mut vlan_from_other_mac = guest_udp(HOST_IP, (1, 2));
    vlan_from_other_mac[6..12].copy_from_slice(&OTHER_MAC);
    vlan_from_other_mac[12..14].copy_from_slice(&[0x81, 0x00]);
    assert_eq!(
        fw.egress(&vlan_from_other_mac, now),
        Verdict::Drop(DropReason::Malformed)
    );
}

fn sample_frames() -> Vec<Vec<u8>> {
    vec![
        guest_tcp(REMOTE_IP, (40_000, 443), SYN),
        to_guest_tcp(REMOTE_IP, (443, 40_000), SYN_ACK),
        guest_udp(HOST_IP, (68, 67)),
        icmp_v4(
            (HOST_MAC, GUEST_MAC),
            (REMOTE_IP, GUEST_IP),
            (3, 4),
            [0; 4],
            &guest_udp(REMOTE_IP, (1, 2))[ETH_LEN..],
        ),
        arp(GUEST_MAC, 1, (GUEST_MAC, GUEST_IP), HOST_IP),
        tcp_v6_with_extensions(&[(HOP_BY_HOP, [0; 8]), (FRAGMENT, [0, 0, 0, 1, 0, 0, 0, 7])]),
        icmp_v6(
            (GUEST_MAC, HOST_MAC),
            (GUEST_LINK_LOCAL, REMOTE_IP6),
            (135, 0),
            [0; 4],
            &[1; 24],
        ),
        icmp_v6(
            (HOST_MAC, GUEST_MAC),
            (REMOTE_IP6, GUEST_IP6),
            (1, 0),
            [0; 4],
            &[0x60; 48],
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let now = Instant::now();
        let mut fw = firewall(OPEN, now);
        both_directions(&mut fw, &bytes, now);
        // Behind a valid Ethernet header with each interesting ether type.
        for ether_type in [[0x08, 0x00], [0x86, 0xdd], [0x08, 0x06], [0x81, 0x00]] {
            let mut frame = GUEST_MAC.to_vec();
            frame.extend_from_slice(&HOST_MAC);
            frame.extend_from_slice(&ether_type);
            frame.extend_from_slice(&bytes);
            both_directions(&mut fw, &frame, now);
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        choice in 0usize..8,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let now = Instant::now();
        let mut fw = firewall(OPEN, now);
        let mut frame = sample_frames().swap_remove(choice);
        for (at, value) in edits {
            let len = frame.len();
            frame[at % len] = value;
        }
        both_directions(&mut fw, &frame, now);
        let len = frame.len();
        both_directions(&mut fw, &frame[..cut % (len + 1)], now);
    }
}
