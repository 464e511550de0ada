//! Anti-spoofing of guest frames and the link-configuration traffic that passes without rules.

mod common;

use std::time::Instant;

use common::*;
use palisade_firewall::{Direction, DropReason, Firewall, FirewallConfig, Verdict};

const CONFIG: &str = r#"{"allowed_ips": ["172.16.0.2/32", "fd00::2/128"],
                         "default_egress": "deny",
                         "egress": [{"action": "allow", "proto": "udp", "ports": "53"}]}"#;

fn guest_firewall() -> (Firewall, Instant) {
    let epoch = Instant::now();
    (firewall(CONFIG, epoch), epoch)
}

#[test]
fn spoofed_source_mac_is_dropped_and_counted() {
    let (mut fw, now) = guest_firewall();
    let frame = udp_v4((OTHER_MAC, HOST_MAC), (GUEST_IP, HOST_IP), (5000, 53));
    assert_eq!(fw.egress(&frame, now), Verdict::Drop(DropReason::SpoofMac));
    assert_eq!(
        fw.counters()
            .dropped(Direction::Egress, DropReason::SpoofMac),
        1
    );
    assert_eq!(
        fw.egress(&guest_udp(HOST_IP, (5000, 53)), now),
        Verdict::Pass
    );
}

#[test]
fn spoofed_source_ip_is_dropped_and_counted() {
    let (mut fw, now) = guest_firewall();
    let frame = udp_v4(
        (GUEST_MAC, HOST_MAC),
        ([172, 16, 0, 3], HOST_IP),
        (5000, 53),
    );
    assert_eq!(fw.egress(&frame, now), Verdict::Drop(DropReason::SpoofIp));
    let frame6 = udp_v6((GUEST_MAC, HOST_MAC), (REMOTE_IP6, GUEST_IP6), (5000, 53));
    assert_eq!(fw.egress(&frame6, now), Verdict::Drop(DropReason::SpoofIp));
    assert_eq!(fw.counters().dropped_total(DropReason::SpoofIp), 2);
    let honest6 = udp_v6((GUEST_MAC, HOST_MAC), (GUEST_IP6, REMOTE_IP6), (5000, 53));
    assert_eq!(fw.egress(&honest6, now), Verdict::Pass);
}

#[test]
fn arp_claims_must_be_the_guests() {
    let (mut fw, now) = guest_firewall();
    // Gratuitous ARP for the host's address.
    let gratuitous = arp(GUEST_MAC, 2, (GUEST_MAC, HOST_IP), HOST_IP);
    assert_eq!(
        fw.egress(&gratuitous, now),
        Verdict::Drop(DropReason::SpoofArp)
    );
    let wrong_sender_mac = arp(GUEST_MAC, 1, (OTHER_MAC, GUEST_IP), HOST_IP);
    assert_eq!(
        fw.egress(&wrong_sender_mac, now),
        Verdict::Drop(DropReason::SpoofArp)
    );
    let request = arp(GUEST_MAC, 1, (GUEST_MAC, GUEST_IP), HOST_IP);
    assert_eq!(fw.egress(&request, now), Verdict::Pass, "ARP needs no rule");
    let probe = arp(GUEST_MAC, 1, (GUEST_MAC, [0; 4]), GUEST_IP);
    assert_eq!(fw.egress(&probe, now), Verdict::Pass);
    assert_eq!(
        fw.counters()
            .dropped(Direction::Egress, DropReason::SpoofArp),
        2
    );
    // Any ARP towards the guest passes.
    let host_reply = arp(HOST_MAC, 2, (HOST_MAC, HOST_IP), GUEST_IP);
    assert_eq!(fw.ingress(&host_reply, now), Verdict::Pass);
}

#[test]
fn guest_cannot_be_a_dhcp_server_or_a_router() {
    let (mut fw, now) = guest_firewall();
    let offer = udp_v4((GUEST_MAC, [0xff; 6]), (GUEST_IP, [255; 4]), (67, 68));
    assert_eq!(
        fw.egress(&offer, now),
        Verdict::Drop(DropReason::RogueDhcpRa)
    );
    let dhcpv6_reply = udp_v6(
        (GUEST_MAC, HOST_MAC),
        (GUEST_LINK_LOCAL, REMOTE_IP6),
        (547, 546),
    );
    assert_eq!(
        fw.egress(&dhcpv6_reply, now),
        Verdict::Drop(DropReason::RogueDhcpRa)
    );
    let all_nodes = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let advert = icmp_v6(
        (GUEST_MAC, HOST_MAC),
        (GUEST_LINK_LOCAL, all_nodes),
        (134, 0),
        [64, 0, 0, 0],
        &[0; 8],
    );
    assert_eq!(
        fw.egress(&advert, now),
        Verdict::Drop(DropReason::RogueDhcpRa)
    );
    let redirect = icmp_v6(
        (GUEST_MAC, HOST_MAC),
        (GUEST_LINK_LOCAL, all_nodes),
        (137, 0),
        [0; 4],
        &[0; 32],
    );
    assert_eq!(
        fw.egress(&redirect, now),
        Verdict::Drop(DropReason::RogueDhcpRa)
    );
    assert_eq!(
        fw.counters()
            .dropped(Direction::Egress, DropReason::RogueDhcpRa),
        4
    );
}

#[test]
fn dhcp_client_and_its_server_pass_without_rules() {
    let (mut fw, now) = guest_firewall();
    let discover = udp_v4((GUEST_MAC, [0xff; 6]), ([0; 4], [255; 4]), (68, 67));
    assert_eq!(
        fw.egress(&discover, now),
        Verdict::Pass,
        "default_egress is deny"
    );
    let offer = udp_v4((HOST_MAC, GUEST_MAC), (HOST_IP, [255; 4]), (67, 68));
    assert_eq!(
        fw.ingress(&offer, now),
        Verdict::Pass,
        "default_ingress is deny"
    );
    let not_dhcp = udp_v4((GUEST_MAC, [0xff; 6]), ([0; 4], [255; 4]), (68, 1234));
    assert_eq!(
        fw.egress(&not_dhcp, now),
        Verdict::Drop(DropReason::SpoofIp)
    );
}

#[test]
fn eui64_link_local_source_and_neighbour_discovery_pass() {
    let (mut fw, now) = guest_firewall();
    let solicited = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 1];
    let mut solicitation = vec![0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    solicitation.extend_from_slice(&[1, 1]);
    solicitation.extend_from_slice(&GUEST_MAC);
    let ns = icmp_v6(
        (GUEST_MAC, HOST_MAC),
        (GUEST_LINK_LOCAL, solicited),
        (135, 0),
        [0; 4],
        &solicitation,
    );
    assert_eq!(fw.egress(&ns, now), Verdict::Pass);
    // Duplicate address detection: from the unspecified address, without a link-layer option.
    let dad = icmp_v6(
        (GUEST_MAC, HOST_MAC),
        ([0; 16], solicited_node(GUEST_IP6)),
        (135, 0),
        [0; 4],
        &GUEST_IP6,
    );
    assert_eq!(fw.egress(&dad, now), Verdict::Pass);
    // Another link-local address is a spoof.
    let mut other_link_local = GUEST_LINK_LOCAL;
    other_link_local[15] = 0x77;
    let spoofed = icmp_v6(
        (GUEST_MAC, HOST_MAC),
        (other_link_local, solicited),
        (135, 0),
        [0; 4],
        &solicitation,
    );
    assert_eq!(fw.egress(&spoofed, now), Verdict::Drop(DropReason::SpoofIp));
    // A link-layer option naming another MAC poisons neighbour caches.
    let mut poisoned = solicitation.clone();
    poisoned[18..24].copy_from_slice(&OTHER_MAC);
    let poison = icmp_v6(
        (GUEST_MAC, HOST_MAC),
        (GUEST_LINK_LOCAL, solicited),
        (135, 0),
        [0; 4],
        &poisoned,
    );
    assert_eq!(fw.egress(&poison, now), Verdict::Drop(DropReason::SpoofArp));
}

#[test]
fn neighbour_advertisement_for_a_foreign_address_is_dropped() {
    let (mut fw, now) = guest_firewall();
    let mut foreign = REMOTE_IP6.to_vec();
    foreign.extend_from_slice(&[2, 1]);
    foreign.extend_from_slice(&GUEST_MAC);
    let lie = icmp_v6(
        (GUEST_MAC, HOST_MAC),
        (GUEST_IP6, REMOTE_IP6),
        (136, 0),
        [0x60, 0, 0, 0],
        &foreign,
    );
    assert_eq!(fw.egress(&lie, now), Verdict::Drop(DropReason::SpoofArp));
    let mut own = GUEST_IP6.to_vec();
    own.extend_from_slice(&[2, 1]);
    own.extend_from_slice(&GUEST_MAC);
    // To the neighbour's link-local address: link control, whatever the rules.
    let truth = icmp_v6(
        (GUEST_MAC, HOST_MAC),
        (GUEST_IP6, HOST_LINK_LOCAL),
        (136, 0),
        [0x60, 0, 0, 0],
        &own,
    );
    assert_eq!(fw.egress(&truth, now), Verdict::Pass);
}

#[test]
fn neighbour_discovery_and_router_advertisements_reach_the_guest() {
    let (mut fw, now) = guest_firewall();
    let router = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let all_nodes = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    for kind in [134, 135, 136] {
        let frame = icmp_v6(
            (HOST_MAC, GUEST_MAC),
            (router, all_nodes),
            (kind, 0),
            [0; 4],
            &GUEST_IP6,
        );
        assert_eq!(fw.ingress(&frame, now), Verdict::Pass, "type {kind}");
    }
    // Echo requests are ordinary traffic: default_ingress deny.
    let ping = icmp_v6(
        (HOST_MAC, GUEST_MAC),
        (REMOTE_IP6, GUEST_IP6),
        (128, 0),
        [0, 1, 0, 1],
        &[],
    );
    assert_eq!(
        fw.ingress(&ping, now),
        Verdict::Drop(DropReason::DefaultDeny)
    );
}

#[test]
fn without_guest_mac_there_is_no_anti_spoofing() {
    let now = Instant::now();
    let config: FirewallConfig = serde_json::from_str("{}").unwrap();
    let mut fw = Firewall::new("eth0", &config, None, now).unwrap();
    let frame = udp_v4((OTHER_MAC, HOST_MAC), ([10, 9, 9, 9], HOST_IP), (67, 68));
    assert_eq!(fw.egress(&frame, now), Verdict::Pass);
    assert_eq!(
        serde_json::to_value(fw.status()).unwrap()["anti_spoofing"],
        false
    );
}

#[test]
fn mac_only_config_checks_the_mac_and_lets_everything_else_through() {
    let now = Instant::now();
    let mut fw = Firewall::new("eth0", &FirewallConfig::mac_only(), Some(GUEST_MAC), now).unwrap();
    let frame = udp_v4((GUEST_MAC, HOST_MAC), ([10, 9, 9, 9], HOST_IP), (5000, 9));
    assert_eq!(fw.egress(&frame, now), Verdict::Pass);
    assert_eq!(
        fw.ingress(&to_guest_tcp(REMOTE_IP, (1234, 22), SYN), now),
        Verdict::Pass
    );
    let spoofed = udp_v4((OTHER_MAC, HOST_MAC), (GUEST_IP, HOST_IP), (5000, 9));
    assert_eq!(
        fw.egress(&spoofed, now),
        Verdict::Drop(DropReason::SpoofMac)
    );
}

#[test]
fn non_ip_frames_are_refused_by_default() {
    let (mut fw, now) = guest_firewall();
    let mut lldp = guest_udp(HOST_IP, (1, 2));
    lldp[12..14].copy_from_slice(&[0x88, 0xcc]);
    assert_eq!(
        fw.egress(&lldp, now),
        Verdict::Drop(DropReason::DefaultDeny)
    );
    lldp[6..12].copy_from_slice(&HOST_MAC);
    assert_eq!(
        fw.ingress(&lldp, now),
        Verdict::Drop(DropReason::DefaultDeny)
    );
}
