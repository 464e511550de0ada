//! Verdict time of the firewall for 10, 1,000 and 10,000 egress rules:
//! - `new_flow/distinct_ports`: each rule its own port and /32; every frame opens a new flow
//!   matched by the last rule (found through the port index), then tracked;
//! - `new_flow/same_port`: every rule on port 443 with its own /32, so the index cannot help
//!   and the last rule is found by a scan (the worst case);
//! - `established`: frames of 1,024 tracked flows, round robin (a conntrack hit, no rules).
//!
//! Run: `cargo bench -p palisade-firewall --bench firewall`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use etherparse::PacketBuilder;
use palisade_firewall::{Firewall, FirewallConfig, Verdict};

const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
const HOST_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x01];
const GUEST_IP: [u8; 4] = [172, 16, 0, 2];
const RULE_COUNTS: [usize; 3] = [10, 1_000, 10_000];
/// New flows per firewall instance (below `conntrack_max`).
const NEW_FLOWS_PER_TABLE: u64 = 60_000;
const ESTABLISHED_FLOWS: usize = 1_024;

#[derive(Clone, Copy)]
enum Layout {
    DistinctPorts,
    SamePort,
}

fn rule_remote(index: usize) -> [u8; 4] {
    [198, 51, (index / 256) as u8, (index % 256) as u8]
}

fn rule_port(layout: Layout, index: usize) -> u16 {
    match layout {
        Layout::DistinctPorts => 10_000 + index as u16,
        Layout::SamePort => 443,
    }
}

fn config(layout: Layout, count: usize) -> FirewallConfig {
    let rules: Vec<String> = (0..count)
        .map(|index| {
            let [a, b, c, d] = rule_remote(index);
            format!(
                r#"{{"action": "allow", "proto": "tcp", "ports": "{}", "cidr": "{a}.{b}.{c}.{d}/32"}}"#,
                rule_port(layout, index)
            )
        })
        .collect();
    let json = format!(
        r#"{{"allowed_ips": ["172.16.0.2/32"], "default_egress": "deny", "egress": [{}]}}"#,
        rules.join(",")
    );
    serde_json::from_str(&json).expect("valid config")
}

fn guest_syn(remote: [u8; 4], src_port: u16, dst_port: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(GUEST_MAC, HOST_MAC)
        .ipv4(GUEST_IP, remote, 64)
        .tcp(src_port, dst_port, 1, 65_535)
        .syn();
    let mut frame = Vec::with_capacity(builder.size(0));
    builder.write(&mut frame, &[]).expect("frame");
    frame
}

/// Frames that each open a new flow matched by the last rule.
fn new_flow_frames(layout: Layout, count: usize) -> Vec<Vec<u8>> {
    let last = count - 1;
    (0..NEW_FLOWS_PER_TABLE)
        .map(|n| guest_syn(rule_remote(last), 1_024 + n as u16, rule_port(layout, last)))
        .collect()
}

fn bench_new_flows(c: &mut Criterion, layout: Layout, name: &str) {
    let mut group = c.benchmark_group(format!("new_flow/{name}"));
    for count in RULE_COUNTS {
        let config = config(layout, count);
        let frames = new_flow_frames(layout, count);
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, _| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                let mut remaining = iters;
                while remaining > 0 {
                    let batch = remaining.min(NEW_FLOWS_PER_TABLE) as usize;
                    let now = Instant::now();
                    let mut firewall =
                        Firewall::new("bench", &config, Some(GUEST_MAC), now).expect("firewall");
                    let start = Instant::now();
                    for frame in &frames[..batch] {
                        let verdict = firewall.egress(black_box(frame), now);
                        debug_assert_eq!(verdict, Verdict::Pass);
                        black_box(verdict);
                    }
                    elapsed += start.elapsed();
                    remaining -= batch as u64;
                }
                elapsed
            });
        });
    }
    group.finish();
}

fn bench_established(c: &mut Criterion) {
    let mut group = c.benchmark_group("established");
    for count in RULE_COUNTS {
        let layout = Layout::SamePort;
        let config = config(layout, count);
        let now = Instant::now();
        let mut firewall = Firewall::new("bench", &config, Some(GUEST_MAC), now).expect("firewall");
        let frames: Vec<Vec<u8>> = (0..ESTABLISHED_FLOWS)
            .map(|n| {
                guest_syn(
                    rule_remote(count - 1),
                    1_024 + n as u16,
                    rule_port(layout, count - 1),
                )
            })
            .collect();
        for frame in &frames {
            assert_eq!(firewall.egress(frame, now), Verdict::Pass);
        }
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, _| {
            let mut next = 0;
            b.iter(|| {
                next = (next + 1) % ESTABLISHED_FLOWS;
                black_box(firewall.egress(black_box(&frames[next]), now))
            });
        });
        assert_eq!(firewall.tracked_flows(), ESTABLISHED_FLOWS);
    }
    group.finish();
}

fn firewall_benches(c: &mut Criterion) {
    bench_new_flows(c, Layout::DistinctPorts, "distinct_ports");
    bench_new_flows(c, Layout::SamePort, "same_port");
    bench_established(c);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = firewall_benches
}
criterion_main!(benches);
