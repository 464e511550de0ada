//! The hostile suite's MMDS group: the probe's `mmds-hostile` scenario attacks the metadata
//! responder on its interface (169.254.169.254, V2) one case at a time, waiting for the host's
//! go-ahead before each, so each case's `net_eth0` counters are its own. Every case is
//! followed by a good request from the guest (a token PUT, which must be answered 200). The
//! tap is captured throughout: nothing addressed to the MMDS address may appear there. The
//! API's latency and the VMM's memory are measured across the whole run.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::common::netns::{TapNetns, GUEST_MAC};
use super::common::{RunningVm, TestVm};
use super::host::ApiWatch;
use super::{
    api_probe, can_attack, capture, flush_metrics, latency_row, spawn_with_api, Table,
    RSS_GROWTH_KIB, TIMEOUT,
};
use crate::common::rss_kib;

const GO_PORT: u16 = 7400;
const MMDS: [u8; 4] = [169, 254, 169, 254];
/// The string at `/big`: the store near its default 51,200-byte limit.
const BIG: usize = 45_000;

/// The cases in the probe's order: name, the attack, what must happen.
const CASES: &[(&str, &str, &str)] = &[
    ("head-over-4k", "request head of 5 KiB", "400"),
    ("forged-token", "GET with a made-up token (far expiry, zero MAC)", "401"),
    ("expired-token", "GET with a token whose 1 s TTL passed", "401"),
    ("bad-mac-token", "GET with a good token's last MAC digit changed", "401"),
    ("xff-on-put", "token PUT carrying X-Forwarded-For", "400 (refused)"),
    ("ttl-0", "token PUT with TTL 0", "400"),
    ("ttl-21601", "token PUT with TTL 21601", "400"),
    ("ttl-non-numeric", "token PUT with TTL `sixty`", "400"),
    ("pipelined", "two GETs in one segment", "one answer (200), then close"),
    ("garbage", "bytes 0..255 then CRLFCRLF", "400"),
    ("big-read", "control: GET of the 45,000-byte value", "200 with all of it"),
    ("zero-window", "GET of the 45,000-byte value with a zero receive window", "RST within 15 s (socket timeout 5 s or deadline 10 s), nothing read"),
    ("icmp", "ICMP echo to the MMDS address", "no answer, not on the tap, mmds_other_drops +1"),
    ("udp", "UDP to the MMDS address port 80", "no answer, not on the tap, mmds_other_drops +1"),
    ("tcp-22", "TCP SYN to the MMDS address port 22", "no answer, not on the tap, mmds_other_drops +1"),
    ("fragments", "a SYN to port 80 in two IPv4 fragments", "no answer, not on the tap, consumed (mmds_frames_in +2)"),
    ("arp-many-senders", "1,000 ARP requests for the MMDS address from 1,000 sender IPs/MACs", "at most one reply each, not on the tap, still served"),
    ("syn-flood", "500 SYNs from distinct ports, never completed, the SYN-ACKs answered with bare RSTs", "SYN-ACKs from at most 8 ports (the sockets; a port's SYN-ACK may be retransmitted), RSTs for the rest; 8 connections open at once again within 12 s"),
    ("slowloris", "8 half-open connections reset (RST|ACK) after 4 s, then 8 connections dribbling a head 1 byte/s, a 9th", "the 8 sockets free again; 9th refused (RST); the 8 aborted at their own 10 s deadline"),
];

/// The text after `key=` in `detail`, up to the next space.
fn word<'a>(detail: &'a str, key: &str) -> &'a str {
    detail
        .split_whitespace()
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or("")
}

fn num(detail: &str, key: &str) -> u64 {
    word(detail, key).parse().unwrap_or(u64::MAX)
}

/// Whether the case held, from the probe's detail and the case's counters.
fn judge(name: &str, d: &str, delta: &Value, on_tap: usize) -> bool {
    let get = |k: &str| delta[k].as_u64().unwrap_or(0);
    let good = word(d, "good") == "200";
    let status = word(d, "status");
    let quiet = word(d, "saw") == "nothing" && on_tap == 0 && get("tx_packets_count") == 0;
    good && match name {
        "head-over-4k" | "xff-on-put" | "ttl-0" | "ttl-21601" | "ttl-non-numeric" | "garbage" => {
            status == "400"
        }
        "forged-token" | "expired-token" | "bad-mac-token" => status == "401",
        "pipelined" => status == "200" && word(d, "responses") == "1" && word(d, "end") == "fin",
        "big-read" => status == "200" && num(d, "body") == BIG as u64,
        "zero-window" => {
            word(d, "end") == "rst" && word(d, "received") == "0" && num(d, "ms") <= 15_000
        }
        "icmp" | "udp" | "tcp-22" => quiet && get("mmds_other_drops") >= 1,
        "fragments" => quiet && get("mmds_frames_in") >= 2 && get("mmds_other_drops") == 0,
        "arp-many-senders" => {
            num(d, "replies") <= 1000 && on_tap == 0 && get("mmds_frames_in") >= 1000
        }
        "syn-flood" => {
            let (rst, synack) = (num(d, "rst"), num(d, "synack"));
            synack <= 8
                && rst >= 1
                && rst + synack <= 500
                && num(d, "reopened") == 8
                && num(d, "recovered_ms") <= 12_000
                && get("mmds_frames_in") >= 500
        }
        "slowloris" => {
            num(d, "halfopen") == 8
                && num(d, "opened") == 8
                && word(d, "extra") == "rst"
                && num(d, "aborted") == 8
                && num(d, "min_ms") >= 9_000
                && num(d, "max_ms") <= 14_000
        }
        _ => false,
    }
}

/// Which case a frame on the tap belongs to, if it is addressed to the MMDS address: by its
/// marker, else by its headers (`other` when it cannot be told).
fn to_mmds(frame: &[u8]) -> Option<&'static str> {
    if frame.len() < 42 {
        return None;
    }
    let ipv4_to = frame[12..14] == [0x08, 0x00] && frame[30..34] == MMDS;
    let arp_for = frame[12..14] == [0x08, 0x06] && frame[38..42] == MMDS;
    if !ipv4_to && !arp_for {
        return None;
    }
    let has = |m: &[u8]| frame.windows(m.len()).any(|w| w == m);
    Some(if arp_for {
        "arp-many-senders"
    } else if has(b"mmds-hostile-icmp") {
        "icmp"
    } else if has(b"mmds-hostile-udp") {
        "udp"
    } else if frame[20] & 0x3f != 0 || frame[21] != 0 {
        "fragments"
    } else if frame[23] == 6 && frame.len() >= 38 && frame[36..38] == [0, 22] {
        "tcp-22"
    } else {
        "other"
    })
}

/// Waits for the whole line that starts with `prefix`; returns what follows it.
fn wait_line(running: &RunningVm, prefix: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let out = running.stdout();
        if let Some(at) = out.find(prefix) {
            if let Some(end) = out[at..].find('\n') {
                return out[at + prefix.len()..at + end].to_string();
            }
        }
        assert!(Instant::now() < deadline, "no line {prefix:?}:\n{out}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `net_eth0` counters of the last metrics line (the delta since the flush before).
fn last_flush(vm: &TestVm) -> Value {
    let text = std::fs::read_to_string(vm.dir.path().join("metrics.json")).unwrap_or_default();
    let last = text.lines().last().unwrap_or("{}");
    serde_json::from_str::<Value>(last).unwrap()["net_eth0"].clone()
}

#[test]
fn mmds_attacks_from_the_guest_are_refused_counted_and_never_reach_the_tap() {
    let test = "mmds_attacks_from_the_guest_are_refused_counted_and_never_reach_the_tap";
    if !can_attack(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return; // skipped (a failure under PALISADE_NO_SKIP, as in CI)
    };
    let mut table = Table::default();
    let frames = capture::capture(&ns, 240, b"mmds-hostile-end");
    let mut vm = api_probe(
        "mmds-hostile,idle",
        &format!("probe.ip=10.0.0.2/24 probe.peer=169.254.169.254:80 probe.port={GO_PORT}"),
    );
    vm.config["network-interfaces"] = json!([{"iface_id": "eth0", "host_dev_name": "tap0",
        "guest_mac": GUEST_MAC}]);
    vm.config["mmds-config"] = json!({"network_interfaces": ["eth0"]});
    let data = vm.dir.path().join("metadata.json");
    let store =
        json!({"latest": {"meta-data": {"instance-id": "i-hostile"}}, "big": "b".repeat(BIG)});
    std::fs::write(&data, store.to_string()).unwrap();
    vm.args
        .extend(["--metadata".into(), data.to_str().unwrap().into()]);
    vm.netns = Some(ns.name.clone());
    let go = ns
        .run(|| UdpSocket::bind("10.0.0.1:0").unwrap())
        .join()
        .unwrap();
    let mut running = spawn_with_api(&vm);
    running.wait_for_output("probe: mmds-hostile ready", TIMEOUT);
    let pid = running.child.id();
    let rss_before = rss_kib(pid);
    let watch = ApiWatch::start(vm.dir.path().join("api.sock"));
    assert_eq!(flush_metrics(&vm), 204, "baseline flush");
    go.send_to(b"go", ("10.0.0.2", GO_PORT)).unwrap();
    let mut results = Vec::new();
    for (name, _, _) in CASES {
        let detail = wait_line(&running, &format!("probe: mmds-hostile case {name} "));
        assert_eq!(flush_metrics(&vm), 204);
        results.push((detail, last_flush(&vm)));
        go.send_to(b"go", ("10.0.0.2", GO_PORT)).unwrap();
    }
    running.wait_for_output("probe: mmds-hostile ok", TIMEOUT);
    running.wait_for_output("probe: idle ok", TIMEOUT);
    let latency = watch.stop();
    let rss_after = rss_kib(pid);
    let frames = frames.join().unwrap();
    let run = running.kill();

    let mut on_tap = std::collections::BTreeMap::<&str, usize>::new();
    for case in frames.iter().filter_map(|f| to_mmds(f)) {
        *on_tap.entry(case).or_default() += 1;
    }
    for ((name, attack, expected), (detail, delta)) in CASES.iter().zip(&results) {
        let tap = on_tap.get(name).copied().unwrap_or(0);
        let get = |k: &str| delta[k].as_u64().unwrap_or(0);
        let observed = format!(
            "{detail}; on the tap {tap}x; mmds_frames_in +{} mmds_frames_out +{} mmds_other_drops +{} tx_packets +{}",
            get("mmds_frames_in"),
            get("mmds_frames_out"),
            get("mmds_other_drops"),
            get("tx_packets_count")
        );
        let pass = judge(name, detail, delta, tap);
        table.record(
            &format!("mmds {name}: {attack}"),
            &format!("{expected}; then a token PUT answered 200"),
            &observed,
            pass,
        );
    }
    let unattributed = on_tap.get("other").copied().unwrap_or(0);
    let ended = frames
        .iter()
        .any(|f| f.windows(16).any(|w| w == b"mmds-hostile-end"));
    table.record(
        "mmds: the tap during all cases",
        "nothing to 169.254.169.254 (IPv4 or ARP); the control datagram captured",
        &format!(
            "{} frames to the MMDS address ({unattributed} unattributed); control {}",
            on_tap.values().sum::<usize>(),
            if ended { "captured" } else { "missing" }
        ),
        on_tap.is_empty() && ended,
    );
    latency_row(
        &mut table,
        "mmds: API GET / during the MMDS attacks",
        latency,
    );
    table.record(
        "mmds: VMM memory across the attacks",
        &format!("VmRSS grows < {} MiB", RSS_GROWTH_KIB / 1024),
        &format!("{rss_before} -> {rss_after} KiB"),
        rss_after < rss_before + RSS_GROWTH_KIB,
    );
    let result = run
        .probe_result("mmds-hostile")
        .unwrap_or("no result")
        .to_string();
    table.record(
        "mmds: every case run",
        &format!("probe ok cases={}", CASES.len()),
        &result,
        result == format!("ok cases={}", CASES.len()),
    );
    table.finish();
}
