//! The firewall's frame parser and verdict, over a sequence of frames in both directions (so
//! flows open, replies and ICMP errors find them, fragments follow). Never panics; counters
//! only grow and each verdict is counted exactly once under its reason; the connection table
//! stays within `conntrack_max`; an egress frame that passes carries the guest's MAC.
//!
//! Input: one byte selects the configuration, then chunks of
//! `[control, length high, length low, frame...]`. Control bits: 0 = ingress, 1 = use the
//! `_headers` variant (the first 64 bytes of the frame, the full length), 2 = run the timer
//! first, 3..8 = seconds to advance the clock.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use palisade_firewall::{Counters, Direction, DropReason, Firewall, FirewallConfig, Verdict};

const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
const CONNTRACK_MAX: usize = 64;
const HEADER_PREFIX: usize = 64;

const CONFIGS: [&str; 3] = [
    r#"{"allowed_ips": ["172.16.0.2/32", "fd00::2/128"],
        "default_ingress": "deny", "default_egress": "deny", "allow_fragments": true,
        "dhcp_servers": ["172.16.0.1", "fe80::1"], "conntrack_max": 64,
        "egress": [{"action": "allow", "proto": "tcp", "ports": "443"},
                   {"action": "allow", "proto": "udp", "ports": "53", "cidr": "8.8.8.8/32"},
                   {"action": "allow", "proto": "icmp", "icmp_type": 8},
                   {"action": "allow", "proto": "udp", "cidr": "192.0.2.0/24"},
                   {"action": "deny", "proto": "any", "cidr": "10.0.0.0/8"}],
        "ingress": [{"action": "allow", "proto": "tcp", "ports": "22", "cidr": "10.0.0.0/8"},
                    {"action": "allow", "proto": "icmpv6", "icmp_type": 128}]}"#,
    r#"{"allowed_ips": ["172.16.0.0/24", "fd00::/64"], "default_egress": "allow",
        "conntrack_max": 64,
        "ingress": [{"action": "deny", "proto": "udp", "ports": "1-1024"},
                    {"action": "allow", "proto": "udp"}]}"#,
    r#"{"allowed_ips": ["0.0.0.0/0", "::/0"], "default_ingress": "allow",
        "allow_fragments": true, "conntrack_max": 64}"#,
];

fn total(counters: &Counters) -> (u64, Vec<u64>) {
    let passed = counters.passed(Direction::Ingress) + counters.passed(Direction::Egress);
    let mut dropped = Vec::new();
    for direction in [Direction::Ingress, Direction::Egress] {
        for reason in DropReason::ALL {
            dropped.push(counters.dropped(direction, reason));
        }
    }
    (passed, dropped)
}

fn reason_slot(direction: Direction, reason: DropReason) -> usize {
    let side = match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    };
    let position = DropReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(usize::MAX);
    side * DropReason::ALL.len() + position
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    let config: FirewallConfig =
        match serde_json::from_str(CONFIGS[usize::from(selector) % CONFIGS.len()]) {
            Ok(config) => config,
            Err(e) => panic!("fixed config does not parse: {e}"),
        };
    let epoch = Instant::now();
    let mut fw = match Firewall::new("eth0", &config, Some(GUEST_MAC), epoch) {
        Ok(fw) => fw,
        Err(e) => panic!("fixed config refused: {e}"),
    };
    let mut now = epoch;
    while let [control, high, low, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*high, *low])).min(tail.len());
        let (frame, next) = tail.split_at(len);
        rest = next;
        now += Duration::from_secs(u64::from(control >> 3));
        if control & 4 != 0 {
            let _ = fw.expire_and_log(now);
        }
        let direction = if control & 1 != 0 {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let before = total(fw.counters());
        let verdict = match (direction, control & 2 != 0) {
            (Direction::Ingress, false) => fw.ingress(frame, now),
            (Direction::Egress, false) => fw.egress(frame, now),
            (Direction::Ingress, true) => {
                fw.ingress_headers(&frame[..len.min(HEADER_PREFIX)], len, now)
            }
            (Direction::Egress, true) => {
                fw.egress_headers(&frame[..len.min(HEADER_PREFIX)], len, now)
            }
        };
        let after = total(fw.counters());
        for (old, new) in before.1.iter().zip(&after.1) {
            assert!(new >= old, "a drop counter went down");
        }
        match verdict {
            Verdict::Pass => {
                assert_eq!(after.0, before.0 + 1, "a pass is counted once");
                assert_eq!(after.1, before.1, "a pass is not counted as a drop");
                if direction == Direction::Egress {
                    assert_eq!(&frame[6..12], &GUEST_MAC, "egress passed another MAC");
                }
            }
            Verdict::Drop(reason) => {
                assert_eq!(after.0, before.0, "a drop is not counted as a pass");
                let slot = reason_slot(direction, reason);
                assert_eq!(
                    after.1[slot],
                    before.1[slot] + 1,
                    "drop counted under its reason"
                );
                let others: u64 = after.1.iter().sum::<u64>() - before.1.iter().sum::<u64>();
                assert_eq!(others, 1, "a drop is counted once");
            }
        }
        assert!(fw.tracked_flows() <= CONNTRACK_MAX);
    }
});
