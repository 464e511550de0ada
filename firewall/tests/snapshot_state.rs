//! A firewall saved and restored (as a VM snapshot does): tracked flows, counters and rule
//! hits carry on with their remaining lifetimes on a new clock, and a hostile state (too many
//! flows, bad enums, bad addresses, flows the rules would refuse, another interface) is
//! refused with a typed error.

mod common;

use std::time::{Duration, Instant};

use common::*;
use palisade_firewall::{
    Direction, DropReason, Firewall, FirewallState, FirewallStateError, SavedFlow, Verdict,
    MAX_SAVED_COUNT,
};

/// Egress to the remote host's UDP 53 and TCP 443 allowed; nothing allowed in.
const EGRESS_ONLY: &str = r#"{"allowed_ips": ["172.16.0.2/32"],
    "ingress": [{"action": "deny", "proto": "udp", "ports": "9999", "cidr": "0.0.0.0/0"}],
    "egress": [{"action": "allow", "proto": "udp", "ports": "53", "cidr": "0.0.0.0/0"},
               {"action": "allow", "proto": "tcp", "ports": "443", "cidr": "0.0.0.0/0"}],
    "default_ingress": "deny", "default_egress": "deny"}"#;

fn restore(state: &FirewallState, now: Instant) -> Result<Firewall, FirewallStateError> {
    Firewall::restore("eth0", &config(EGRESS_ONLY), Some(GUEST_MAC), state, now)
}

/// A firewall with one UDP flow (replied), one TCP connection and a counted rule deny.
fn busy_firewall(epoch: Instant) -> Firewall {
    let mut fw = firewall(EGRESS_ONLY, epoch);
    let pass = |v: Verdict| assert_eq!(v, Verdict::Pass);
    pass(fw.egress(&guest_udp(REMOTE_IP, (40_000, 53)), epoch));
    pass(fw.ingress(&to_guest_udp(REMOTE_IP, (53, 40_000)), epoch));
    pass(fw.egress(&guest_tcp(REMOTE_IP, (50_000, 443), SYN), epoch));
    pass(fw.ingress(&to_guest_tcp(REMOTE_IP, (443, 50_000), SYN_ACK), epoch));
    assert_eq!(
        fw.ingress(&to_guest_udp(REMOTE_IP, (1234, 9999)), epoch),
        Verdict::Drop(DropReason::RuleDeny)
    );
    fw
}

fn saved_state() -> FirewallState {
    let epoch = Instant::now();
    busy_firewall(epoch).save(secs(epoch, 10))
}

#[test]
fn restored_flows_let_replies_through_and_blocked_packets_stay_blocked_and_counted() {
    let state = saved_state();
    assert_eq!(state.flows.len(), 2);
    assert!(state.flows.iter().all(|f| f.idle_ms == 10_000), "{state:?}");
    // The restore runs on another clock: an epoch unrelated to the saving firewall's.
    let now = Instant::now() + Duration::from_secs(1_000);
    let mut fw = restore(&state, now).unwrap();
    assert_eq!(fw.tracked_flows(), 2);
    assert_eq!(
        fw.counters()
            .dropped(Direction::Ingress, DropReason::RuleDeny),
        1
    );
    assert_eq!(fw.counters().flows_created, 2);
    assert_eq!(
        fw.ingress(&to_guest_udp(REMOTE_IP, (53, 40_000)), now),
        Verdict::Pass,
        "the reply rides on the restored flow"
    );
    assert_eq!(
        fw.ingress(&to_guest_tcp(REMOTE_IP, (443, 50_000), ACK), now),
        Verdict::Pass
    );
    assert_eq!(
        fw.ingress(&to_guest_udp(REMOTE_IP, (1234, 9999)), now),
        Verdict::Drop(DropReason::RuleDeny)
    );
    assert_eq!(
        fw.counters()
            .dropped(Direction::Ingress, DropReason::RuleDeny),
        2
    );
    assert_eq!(
        fw.ingress(&to_guest_udp(REMOTE_IP, (53, 40_001)), now),
        Verdict::Drop(DropReason::DefaultDeny),
        "a stranger is no flow"
    );
    let status = serde_json::to_value(fw.status()).unwrap();
    assert_eq!(status["rule_hits"]["egress"], serde_json::json!([1, 1]));
}

#[test]
fn a_restored_flow_keeps_only_its_remaining_lifetime() {
    let state = saved_state();
    let now = Instant::now();
    let mut fw = restore(&state, now).unwrap();
    // The replied UDP flow had 180 s, 10 of which were spent before the save.
    fw.expire_and_log(secs(now, 169)).unwrap();
    assert_eq!(fw.tracked_flows(), 2);
    fw.expire_and_log(secs(now, 171)).unwrap();
    assert_eq!(
        fw.tracked_flows(),
        1,
        "the UDP flow expired, the TCP one lives"
    );
    assert_eq!(
        fw.ingress(&to_guest_udp(REMOTE_IP, (53, 40_000)), secs(now, 171)),
        Verdict::Drop(DropReason::DefaultDeny)
    );
}

#[test]
fn flows_expired_at_the_save_are_left_out() {
    let mut state = saved_state();
    state.flows[0].idle_ms = u64::MAX;
    state.flows[1].idle_ms = 6 * 24 * 3_600 * 1_000;
    let fw = restore(&state, Instant::now()).unwrap();
    assert_eq!(fw.tracked_flows(), 0);
}

#[test]
fn more_flows_than_the_table_holds_are_refused() {
    let mut state = saved_state();
    let cap: usize = 4;
    let config = config(&EGRESS_ONLY.replace(
        "\"default_egress\"",
        "\"conntrack_max\": 4, \"default_egress\"",
    ));
    let flow = state.flows[0].clone();
    state.flows = (0..=cap as u16)
        .map(|port| SavedFlow {
            guest_port: port,
            ..flow.clone()
        })
        .collect();
    let err =
        Firewall::restore("eth0", &config, Some(GUEST_MAC), &state, Instant::now()).unwrap_err();
    assert!(
        matches!(err, FirewallStateError::TooManyFlows { count: 5, max: 4 }),
        "{err}"
    );
    state.flows.pop();
    Firewall::restore("eth0", &config, Some(GUEST_MAC), &state, Instant::now()).unwrap();
}

#[test]
fn bad_enums_addresses_ports_and_flags_are_refused_with_typed_errors() {
    let state = saved_state();
    let udp = state.flows.iter().position(|f| f.protocol == 17).unwrap();
    let tcp = 1 - udp;
    let with = |index: usize, change: &dyn Fn(&mut SavedFlow)| {
        let mut s = state.clone();
        change(&mut s.flows[index]);
        restore(&s, Instant::now()).map(|_| ()).unwrap_err()
    };
    let e = with(udp, &|f| f.state = 6);
    assert!(
        matches!(e, FirewallStateError::State { value: 6, .. }),
        "{e}"
    );
    let e = with(udp, &|f| f.origin = 2);
    assert!(
        matches!(e, FirewallStateError::Origin { value: 2, .. }),
        "{e}"
    );
    for (index, change) in [
        (
            udp,
            &(|f: &mut SavedFlow| f.remote = 1 << 40) as &dyn Fn(&mut SavedFlow),
        ),
        (udp, &|f| f.state = 1),
        (tcp, &|f| f.state = 5),
        (tcp, &|f| f.fin_from_reply = true),
        (udp, &|f| {
            f.protocol = 47;
            f.guest_port = 1;
        }),
    ] {
        let e = with(index, change);
        assert!(matches!(e, FirewallStateError::Inconsistent { .. }), "{e}");
    }
    let e = with(udp, &|f| f.remote_port = 54);
    assert!(matches!(e, FirewallStateError::NotAllowed(_)), "{e}");
    // A guest-opened flow from an address the guest does not own.
    let e = with(udp, &|f| f.guest = 0x0a00_0009);
    assert!(matches!(e, FirewallStateError::NotAllowed(_)), "{e}");
    let mut twice = state.clone();
    twice.flows.push(twice.flows[udp].clone());
    let e = restore(&twice, Instant::now()).map(|_| ()).unwrap_err();
    assert!(matches!(e, FirewallStateError::Duplicate(2)), "{e}");
}

#[test]
fn a_state_of_another_interface_mac_or_rule_set_or_with_overflowing_counters_is_refused() {
    let state = saved_state();
    let cfg = config(EGRESS_ONLY);
    let now = Instant::now();
    let e = Firewall::restore("eth1", &cfg, Some(GUEST_MAC), &state, now)
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, FirewallStateError::Interface { .. }), "{e}");
    let e = Firewall::restore("eth0", &cfg, Some(OTHER_MAC), &state, now)
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, FirewallStateError::GuestMac(_)), "{e}");
    let mut s = state.clone();
    s.egress_rule_hits.push(0);
    let e = restore(&s, now).map(|_| ()).unwrap_err();
    assert!(matches!(e, FirewallStateError::RuleHits { .. }), "{e}");
    let mut s = state.clone();
    s.counters.passed_bytes[1] = u64::MAX;
    let e = restore(&s, now).map(|_| ()).unwrap_err();
    assert!(matches!(e, FirewallStateError::Count(_)), "{e}");
    let mut s = state.clone();
    s.flows[0].bytes = MAX_SAVED_COUNT + 1;
    let e = restore(&s, now).map(|_| ()).unwrap_err();
    assert!(matches!(e, FirewallStateError::Count(_)), "{e}");
    let mut s = state;
    s.counters.dropped_ingress.pop();
    let e = restore(&s, now).map(|_| ()).unwrap_err();
    assert!(matches!(e, FirewallStateError::DropCounters { .. }), "{e}");
}

#[test]
fn a_firewall_restored_at_the_count_bound_counts_on_and_its_save_restores_again() {
    let mut state = saved_state();
    state.counters.flows_created = MAX_SAVED_COUNT;
    state.counters.passed_frames = [MAX_SAVED_COUNT; 2];
    let now = Instant::now();
    let mut fw = restore(&state, now).unwrap();
    assert_eq!(
        fw.egress(&guest_udp(REMOTE_IP, (40_002, 53)), now),
        Verdict::Pass
    );
    assert_eq!(fw.counters().flows_created, MAX_SAVED_COUNT + 1);
    let again = fw.save(now);
    assert_eq!(again.counters.flows_created, MAX_SAVED_COUNT);
    assert_eq!(restore(&again, now).unwrap().tracked_flows(), 3);
}
