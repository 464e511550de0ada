//! A network interface's firewall state from a snapshot: the postcard decoder, then
//! `Firewall::restore`'s checks (flow count within the table, enums, addresses, ports, TCP
//! flags, duplicates, flows the rules must admit). Never panics nor allocates beyond the
//! bounds. Input: one mode byte (bits 0-1 pick the rule set, bit 2 anti-spoofing off), then a
//! state body, wrapped here in a valid state file so the decoder behind the tag is reached.
//! A state that restores must hold at most `conntrack_max` flows, and the restored firewall
//! must save a state that restores again (on another clock) to as many flows.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use palisade::snapshot::auth::tag;
use palisade::snapshot::format::HEADER_LEN;
use palisade::snapshot::{MemoryIdentity, StateFile};
use palisade_firewall::{Firewall, FirewallConfig, FirewallState};

const CONFIGS: [&str; 4] = [
    r#"{"conntrack_max": 64}"#,
    r#"{"conntrack_max": 8, "allowed_ips": ["10.0.0.2/32", "fd00::2/128"],
        "ingress": [{"action": "allow", "proto": "tcp", "ports": "22", "cidr": "0.0.0.0/0"}],
        "egress": [{"action": "allow", "proto": "udp", "ports": "53", "cidr": "10.0.0.1/32"}],
        "default_egress": "deny"}"#,
    r#"{"conntrack_max": 16, "default_ingress": "allow",
        "egress": [{"action": "deny", "proto": "icmp", "cidr": "0.0.0.0/0"}]}"#,
    r#"{"conntrack_max": 1, "allowed_ips": ["0.0.0.0/0", "::/0"]}"#,
];
const MAC: [u8; 6] = [6, 0, 10, 0, 0, 2];
const HOST_MAC: [u8; 6] = [6, 0, 10, 0, 0, 1];
const GUEST: [u8; 4] = [10, 0, 0, 2];
const HOST: [u8; 4] = [10, 0, 0, 1];

/// An Ethernet + IPv4 frame of `protocol` with an 8-byte (UDP) or 20-byte (TCP, `flags`)
/// transport header from `src` to `dst`.
fn frame(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    tcp: Option<u8>,
) -> Vec<u8> {
    let l4 = if tcp.is_some() { 20 } else { 8 };
    let total = (20 + l4) as u16;
    let mut f = Vec::new();
    f.extend_from_slice(&macs.1);
    f.extend_from_slice(&macs.0);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, if tcp.is_some() { 6 } else { 17 }, 0, 0]);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.1.to_be_bytes());
    f.extend_from_slice(&dst.1.to_be_bytes());
    match tcp {
        Some(flags) => {
            f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0])
        }
        None => f.extend_from_slice(&[0, 8, 0, 0]),
    }
    f
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let config: FirewallConfig =
        serde_json::from_str(CONFIGS[usize::from(mode & 3)]).expect("fixed config");
    let mac = (mode & 4 == 0).then_some(MAC);
    if mac.is_none() && !config.allowed_ips.is_empty() {
        return;
    }
    let memory = MemoryIdentity {
        size: 1 << 20,
        sha256: None,
    };
    let mut file = StateFile::encode(&(), None, &memory).unwrap();
    file.truncate(HEADER_LEN);
    file[16..24].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    file.extend_from_slice(bytes);
    let t = tag(None, &[&file]);
    file.extend_from_slice(&t);
    let Ok(opened) = StateFile::open(&file, None) else {
        return;
    };
    let Ok(state) = opened.state::<FirewallState>() else {
        return;
    };
    let now = Instant::now();
    let Ok(firewall) = Firewall::restore("eth0", &config, mac, &state, now) else {
        return;
    };
    assert!(firewall.tracked_flows() <= config.conntrack_max);
    // The restored firewall counts on without overflowing: traffic of the seeds' flows, then
    // a day of expiry.
    let mut firewall = firewall;
    for (port, tcp) in [(53, None), (80, Some(0x10)), (22, Some(0x11))] {
        let out = frame((MAC, HOST_MAC), (GUEST, 40_000), (HOST, port), tcp);
        let back = frame((HOST_MAC, MAC), (HOST, port), (GUEST, 40_000), tcp);
        let _ = firewall.egress(&out, now);
        let _ = firewall.ingress(&back, now);
    }
    let _ = firewall.expire_and_log(now + Duration::from_secs(86_400));
    // Its own save restores again, on another clock, to the same flows.
    let again = firewall.save(now + Duration::from_secs(86_400));
    let later = now + Duration::from_secs(3_600);
    let restored = Firewall::restore("eth0", &config, mac, &again, later).unwrap();
    assert_eq!(restored.tracked_flows(), firewall.tracked_flows());
});
