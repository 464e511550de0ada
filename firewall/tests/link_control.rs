//! Link-control traffic (DHCP, DHCPv6, neighbour discovery, MLD) passes without rules only
//! while it stays on the link: under a deny-all policy it must not be a channel to the
//! internet, in either direction.

mod common;

use std::time::Instant;

use common::*;
use palisade_firewall::{
    ConfigError, Direction, DropReason, Firewall, FirewallConfig, FirewallError, Verdict,
};

/// Deny everything both ways: only link control may pass.
const DENY_ALL: &str = r#"{"allowed_ips": ["172.16.0.2/32", "fd00::2/128"],
                           "default_egress": "deny", "default_ingress": "deny"}"#;

const DENY_ALL_WITH_SERVERS: &str = r#"{"allowed_ips": ["172.16.0.2/32", "fd00::2/128"],
                           "default_egress": "deny", "default_ingress": "deny",
                           "dhcp_servers": ["172.16.0.1", "fe80::1"]}"#;

const DEFAULT_DENY: Verdict = Verdict::Drop(DropReason::DefaultDeny);

fn deny_all() -> (Firewall, Instant) {
    let now = Instant::now();
    (firewall(DENY_ALL, now), now)
}

fn guest_udp6(src: [u8; 16], dst: [u8; 16], ports: (u16, u16)) -> Vec<u8> {
    udp_v6((GUEST_MAC, HOST_MAC), (src, dst), ports)
}

fn guest_icmp6(src: [u8; 16], dst: [u8; 16], kind: u8, hops: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = icmp_v6((GUEST_MAC, HOST_MAC), (src, dst), (kind, 0), [0; 4], body);
    set_hop_limit(&mut frame, hops);
    frame
}

fn to_guest_icmp6(src: [u8; 16], dst: [u8; 16], kind: u8, hops: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = icmp_v6((HOST_MAC, GUEST_MAC), (src, dst), (kind, 0), [0; 4], body);
    set_hop_limit(&mut frame, hops);
    frame
}

#[test]
fn dhcp_client_ports_to_an_internet_address_are_judged_by_the_rules() {
    let (mut fw, now) = deny_all();
    let tunnel = udp_v4((GUEST_MAC, HOST_MAC), (GUEST_IP, REMOTE_IP), (68, 67));
    assert_eq!(fw.egress(&tunnel, now), DEFAULT_DENY);
    let tunnel6 = guest_udp6(GUEST_IP6, REMOTE_IP6, (546, 547));
    assert_eq!(fw.egress(&tunnel6, now), DEFAULT_DENY);
    let tunnel6_from_link_local = guest_udp6(GUEST_LINK_LOCAL, REMOTE_IP6, (546, 547));
    assert_eq!(fw.egress(&tunnel6_from_link_local, now), DEFAULT_DENY);
    // The unspecified source is only for a client without a lease, and only to broadcast.
    let unspecified_unicast = udp_v4((GUEST_MAC, HOST_MAC), ([0; 4], REMOTE_IP), (68, 67));
    assert_eq!(
        fw.egress(&unspecified_unicast, now),
        Verdict::Drop(DropReason::SpoofIp)
    );
    assert_eq!(
        fw.counters()
            .dropped(Direction::Egress, DropReason::DefaultDeny),
        3
    );
}

#[test]
fn dhcp_client_traffic_on_the_link_passes_without_rules() {
    let (mut fw, now) = deny_all();
    let discover = udp_v4((GUEST_MAC, [0xff; 6]), ([0; 4], [255; 4]), (68, 67));
    assert_eq!(fw.egress(&discover, now), Verdict::Pass);
    let rebind = udp_v4((GUEST_MAC, [0xff; 6]), (GUEST_IP, [255; 4]), (68, 67));
    assert_eq!(fw.egress(&rebind, now), Verdict::Pass);
    let solicit = guest_udp6(GUEST_LINK_LOCAL, DHCPV6_SERVERS, (546, 547));
    assert_eq!(fw.egress(&solicit, now), Verdict::Pass);
    // A unicast renewal needs the server to be configured.
    let renew = udp_v4((GUEST_MAC, HOST_MAC), (GUEST_IP, HOST_IP), (68, 67));
    assert_eq!(fw.egress(&renew, now), DEFAULT_DENY);
    let mut fw = firewall(DENY_ALL_WITH_SERVERS, now);
    assert_eq!(fw.egress(&renew, now), Verdict::Pass);
    let renew6 = guest_udp6(GUEST_LINK_LOCAL, HOST_LINK_LOCAL, (546, 547));
    assert_eq!(fw.egress(&renew6, now), Verdict::Pass);
}

#[test]
fn dhcp_replies_pass_only_from_the_link_or_a_configured_server() {
    let (mut fw, now) = deny_all();
    let from_internet = udp_v4((HOST_MAC, GUEST_MAC), (REMOTE_IP, GUEST_IP), (67, 68));
    assert_eq!(fw.ingress(&from_internet, now), DEFAULT_DENY);
    let broadcast_offer = udp_v4((HOST_MAC, GUEST_MAC), (HOST_IP, [255; 4]), (67, 68));
    assert_eq!(fw.ingress(&broadcast_offer, now), Verdict::Pass);
    let unicast_offer = udp_v4((HOST_MAC, GUEST_MAC), (HOST_IP, GUEST_IP), (67, 68));
    assert_eq!(fw.ingress(&unicast_offer, now), DEFAULT_DENY);
    let v6_from_internet = udp_v6((HOST_MAC, GUEST_MAC), (REMOTE_IP6, GUEST_IP6), (547, 546));
    assert_eq!(fw.ingress(&v6_from_internet, now), DEFAULT_DENY);
    let v6_on_link = udp_v6(
        (HOST_MAC, GUEST_MAC),
        (HOST_LINK_LOCAL, GUEST_LINK_LOCAL),
        (547, 546),
    );
    assert_eq!(fw.ingress(&v6_on_link, now), Verdict::Pass);
    let mut fw = firewall(DENY_ALL_WITH_SERVERS, now);
    assert_eq!(fw.ingress(&unicast_offer, now), Verdict::Pass);
    assert_eq!(fw.ingress(&from_internet, now), DEFAULT_DENY);
}

#[test]
fn neighbour_discovery_to_a_global_address_is_judged_by_the_rules() {
    let (mut fw, now) = deny_all();
    // Any payload rides in a well-formed option (a nonce, type 14).
    let mut secret = vec![14, 3];
    secret.extend_from_slice(b"exfiltrated secret 22b");
    for (kind, target) in [(133, None), (135, Some(REMOTE_IP6)), (136, Some(GUEST_IP6))] {
        let mut body = target.map_or_else(Vec::new, |target| target.to_vec());
        body.extend_from_slice(&secret);
        let out = guest_icmp6(GUEST_IP6, REMOTE_IP6, kind, 255, &body);
        assert_eq!(fw.egress(&out, now), DEFAULT_DENY, "type {kind} out");
    }
    // On the link but not with hop limit 255: not neighbour discovery (RFC 4861).
    let forwarded = guest_icmp6(
        GUEST_LINK_LOCAL,
        solicited_node(HOST_LINK_LOCAL),
        135,
        64,
        &HOST_LINK_LOCAL,
    );
    assert_eq!(fw.egress(&forwarded, now), DEFAULT_DENY);
    let on_link = guest_icmp6(
        GUEST_LINK_LOCAL,
        solicited_node(HOST_LINK_LOCAL),
        135,
        255,
        &HOST_LINK_LOCAL,
    );
    assert_eq!(fw.egress(&on_link, now), Verdict::Pass);
    let mut own = GUEST_IP6.to_vec();
    own.extend_from_slice(&[2, 1]);
    own.extend_from_slice(&GUEST_MAC);
    let advert = guest_icmp6(GUEST_IP6, HOST_LINK_LOCAL, 136, 255, &own);
    assert_eq!(fw.egress(&advert, now), Verdict::Pass);
}

#[test]
fn neighbour_discovery_from_the_internet_is_judged_by_the_rules() {
    let (mut fw, now) = deny_all();
    for kind in [133, 134, 135, 136, 137] {
        // Forwarded by at least one router: hop limit below 255.
        let routed = to_guest_icmp6(REMOTE_IP6, GUEST_IP6, kind, 254, &[0; 32]);
        assert_eq!(fw.ingress(&routed, now), DEFAULT_DENY, "type {kind} routed");
        let on_link = to_guest_icmp6(HOST_LINK_LOCAL, ALL_NODES, kind, 255, &[0; 32]);
        assert_eq!(
            fw.ingress(&on_link, now),
            Verdict::Pass,
            "type {kind} on link"
        );
    }
    // Router advertisements and redirects come from a link-local address (RFC 4861 6.1.2).
    for kind in [134, 137] {
        let global_router = to_guest_icmp6(REMOTE_IP6, ALL_NODES, kind, 255, &[0; 32]);
        assert_eq!(fw.ingress(&global_router, now), DEFAULT_DENY, "type {kind}");
    }
}

#[test]
fn mld_passes_only_as_link_local_multicast_with_hop_limit_one() {
    let (mut fw, now) = deny_all();
    let report = guest_icmp6(GUEST_LINK_LOCAL, MLD2_ROUTERS, 143, 1, &[0; 4]);
    assert_eq!(fw.egress(&report, now), Verdict::Pass);
    // RFC 3590: a report before the link-local address is ready comes from ::.
    let early = guest_icmp6([0; 16], MLD2_ROUTERS, 143, 1, &[0; 4]);
    assert_eq!(fw.egress(&early, now), Verdict::Pass);
    let to_internet = guest_icmp6(GUEST_IP6, REMOTE_IP6, 131, 1, &[0; 20]);
    assert_eq!(fw.egress(&to_internet, now), DEFAULT_DENY);
    let routable = guest_icmp6(GUEST_LINK_LOCAL, MLD2_ROUTERS, 143, 64, &[0; 4]);
    assert_eq!(fw.egress(&routable, now), DEFAULT_DENY);
    let from_global = guest_icmp6(GUEST_IP6, MLD2_ROUTERS, 143, 1, &[0; 4]);
    assert_eq!(fw.egress(&from_global, now), DEFAULT_DENY);
    let query = to_guest_icmp6(HOST_LINK_LOCAL, ALL_NODES, 130, 1, &[0; 20]);
    assert_eq!(fw.ingress(&query, now), Verdict::Pass);
    let remote_query = to_guest_icmp6(REMOTE_IP6, GUEST_IP6, 130, 1, &[0; 20]);
    assert_eq!(fw.ingress(&remote_query, now), DEFAULT_DENY);
}

#[test]
fn duplicate_address_probe_for_a_foreign_address_is_dropped() {
    let (mut fw, now) = deny_all();
    let own = guest_icmp6([0; 16], solicited_node(GUEST_IP6), 135, 255, &GUEST_IP6);
    assert_eq!(fw.egress(&own, now), Verdict::Pass);
    let own_link_local = guest_icmp6(
        [0; 16],
        solicited_node(GUEST_LINK_LOCAL),
        135,
        255,
        &GUEST_LINK_LOCAL,
    );
    assert_eq!(fw.egress(&own_link_local, now), Verdict::Pass);
    let foreign = guest_icmp6([0; 16], solicited_node(REMOTE_IP6), 135, 255, &REMOTE_IP6);
    assert_eq!(
        fw.egress(&foreign, now),
        Verdict::Drop(DropReason::SpoofArp)
    );
    // From :: to anything but the target's solicited-node group is not DAD.
    let elsewhere = guest_icmp6([0; 16], REMOTE_IP6, 135, 255, &GUEST_IP6);
    assert_eq!(
        fw.egress(&elsewhere, now),
        Verdict::Drop(DropReason::SpoofIp)
    );
    let not_dad = guest_icmp6([0; 16], ALL_NODES, 133, 255, &[0; 4]);
    assert_eq!(fw.egress(&not_dad, now), Verdict::Drop(DropReason::SpoofIp));
}

#[test]
fn guest_never_sends_as_a_dhcp_server_whatever_its_source_port() {
    let now = Instant::now();
    let mut fw = firewall(r#"{"allowed_ips": ["172.16.0.2/32", "fd00::2/128"]}"#, now);
    let offer = udp_v4((GUEST_MAC, [0xff; 6]), (GUEST_IP, [255; 4]), (1234, 68));
    assert_eq!(
        fw.egress(&offer, now),
        Verdict::Drop(DropReason::RogueDhcpRa)
    );
    let reply6 = guest_udp6(GUEST_LINK_LOCAL, ALL_NODES, (4000, 546));
    assert_eq!(
        fw.egress(&reply6, now),
        Verdict::Drop(DropReason::RogueDhcpRa)
    );
    let from_server_port = udp_v4((GUEST_MAC, HOST_MAC), (GUEST_IP, REMOTE_IP), (67, 9999));
    assert_eq!(
        fw.egress(&from_server_port, now),
        Verdict::Drop(DropReason::RogueDhcpRa)
    );
    // Ordinary traffic on other ports is still allowed by default_egress.
    let ordinary = udp_v4((GUEST_MAC, HOST_MAC), (GUEST_IP, REMOTE_IP), (1234, 69));
    assert_eq!(fw.egress(&ordinary, now), Verdict::Pass);
}

#[test]
fn allowed_ips_without_guest_mac_is_refused() {
    let now = Instant::now();
    let config = config(r#"{"allowed_ips": ["172.16.0.2/32"]}"#);
    assert_eq!(
        config.validate_for_interface(None),
        Err(ConfigError::AllowedIpsWithoutGuestMac)
    );
    assert_eq!(config.validate_for_interface(Some(GUEST_MAC)), Ok(()));
    let refused = Firewall::new("eth0", &config, None, now);
    assert!(matches!(
        refused,
        Err(FirewallError::Config(
            ConfigError::AllowedIpsWithoutGuestMac
        ))
    ));
    let mut open = Firewall::new("eth0", &FirewallConfig::default(), None, now).unwrap();
    assert!(matches!(
        open.update(&config),
        Err(FirewallError::Config(
            ConfigError::AllowedIpsWithoutGuestMac
        ))
    ));
    let message = ConfigError::AllowedIpsWithoutGuestMac.to_string();
    assert!(message.contains("guest_mac"), "{message}");
}

#[test]
fn dhcp_servers_must_be_unicast_addresses() {
    for bad in ["255.255.255.255", "0.0.0.0", "ff02::1:2", "::", "224.0.0.1"] {
        let config = config(&format!(r#"{{"dhcp_servers": ["{bad}"]}}"#));
        assert!(
            matches!(config.validate(), Err(ConfigError::DhcpServer(_))),
            "{bad}"
        );
    }
}
