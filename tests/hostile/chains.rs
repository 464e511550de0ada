//! The hostile suite's malformed-chain group for virtio-rng and virtio-net (the probe's
//! `chain-hostile`; blk has its own, `blk-hostile`): buffers outside RAM, zero length, the
//! wrong direction, loops, chains longer than the queue, `next` and head out of range,
//! indirect, avail index jumps, runts and oversized TX frames, RX buffers shorter than the
//! header, the same head 16 times. The probe judges what the device did and that a good
//! request works after it; the host keeps frames coming into the tap (for the RX queue),
//! captures what leaves it (good frames must, refused ones must not) and checks the counters.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::common::netns::{TapNetns, GUEST_MAC};
use super::host::ApiWatch;
use super::{
    api_probe, can_attack, capture, flush_metrics, latency_row, metric_totals, spawn_with_api,
    Table, RSS_GROWTH_KIB, TIMEOUT,
};
use crate::common::rss_kib;

/// Cases per device in the probe's order (the TX and RX extras included).
const RNG_CASES: usize = 10;
const TX_CASES: usize = 12;
const RX_CASES: usize = 11;

/// Sends a UDP datagram 10.0.0.1 -> 10.0.0.2:7401 (the guest's MAC as a static neighbour)
/// every 5 ms until `stop`; returns (sent, refused by the host stack).
fn inject(ns: &TapNetns, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    ns.exec(&[
        "ip", "neigh", "replace", "10.0.0.2", "lladdr", GUEST_MAC, "dev", "tap0",
    ]);
    ns.run(move || {
        let sock = UdpSocket::bind("10.0.0.1:7401").unwrap();
        sock.set_nonblocking(true).unwrap();
        let (mut sent, mut refused) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            match sock.send_to(b"chains-rx-from-the-host", ("10.0.0.2", 7401)) {
                Ok(_) => sent += 1,
                Err(_) => refused += 1,
            }
            std::thread::sleep(Duration::from_millis(5)); // A frame rate, not synchronisation.
        }
        (sent, refused)
    })
}

/// What the device must do with `case`.
fn expected(case: &str) -> &'static str {
    match case {
        "same-head-16x" => "16 used entries, works after",
        "chain-loop"
        | "chain-longer-than-queue"
        | "next-out-of-range"
        | "indirect"
        | "avail-idx-jump"
        | "head-out-of-range" => "DEVICE_NEEDS_RESET, works after a reset",
        _ => "used with length 0, buffer untouched, works after",
    }
}

fn count(frames: &[Vec<u8>], marker: &str) -> usize {
    let m = marker.as_bytes();
    frames
        .iter()
        .filter(|f| f.windows(m.len()).any(|w| w == m))
        .count()
}

#[test]
fn malformed_chains_to_rng_and_net_are_refused_or_reset_and_the_devices_work_after() {
    let test = "malformed_chains_to_rng_and_net_are_refused_or_reset_and_the_devices_work_after";
    if !can_attack(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return; // skipped (a failure under PALISADE_NO_SKIP, as in CI)
    };
    let mut table = Table::default();
    // No firewall: what the devices do with chains is judged here, not the frames' content.
    let mut vm = api_probe("chain-hostile,idle", "");
    vm.config["network-interfaces"] =
        json!([{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": GUEST_MAC}]);
    vm.config["entropy"] = json!({});
    vm.netns = Some(ns.name.clone());
    let frames = capture::capture(&ns, 60, b"chains-tx-done");
    let stop = Arc::new(AtomicBool::new(false));
    let injector = inject(&ns, stop.clone());
    let mut running = spawn_with_api(&vm);
    running.wait_for_output("probe: ready", TIMEOUT);
    let pid = running.child.id();
    let rss_before = rss_kib(pid);
    let watch = ApiWatch::start(vm.dir.path().join("api.sock"));
    running.wait_for_output("probe: idle ok", TIMEOUT);
    let seen = watch.stop();
    let rss_after = rss_kib(pid);
    let flushed = flush_metrics(&vm);
    stop.store(true, Ordering::Relaxed);
    let injected = injector.join().unwrap();
    let frames = frames.join().unwrap();
    let run = running.kill();

    let mut cases = [0usize; 3];
    for line in run.stdout.lines() {
        let Some(rest) = line.strip_prefix("probe: chain-hostile case ") else {
            continue;
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        let [dev, case, verdict, saw, good] = w[..] else {
            panic!("bad line {line:?}");
        };
        let expected = expected(case);
        let mut observed = format!("{saw} {good}");
        let mut pass = verdict == "pass" && good == "good=ok";
        if dev == "net-tx" {
            let on_tap = count(&frames, &format!("chains-tx-{case}"));
            let want = if case == "same-head-16x" { 17 } else { 1 };
            let bad = count(&frames, &format!("chains-bad-{case}"));
            observed += &format!(", good frame on the tap {on_tap}x, refused frame {bad}x");
            pass &= on_tap == want && bad == 0;
        }
        let i = ["rng", "net-tx", "net-rx"].iter().position(|d| *d == dev);
        cases[i.unwrap()] += 1;
        table.record(&format!("chains: {dev} {case}"), expected, &observed, pass);
    }
    let result = run.probe_result("chain-hostile").unwrap_or("no result");
    table.record(
        "chains: every case run",
        &format!("rng {RNG_CASES}, net-tx {TX_CASES}, net-rx {RX_CASES}, probe ok"),
        &format!(
            "rng {}, net-tx {}, net-rx {}, probe {result:?}, host frames injected {injected:?} (sent, refused)",
            cases[0], cases[1], cases[2]
        ),
        cases == [RNG_CASES, TX_CASES, RX_CASES] && result.starts_with("ok"),
    );
    let net = metric_totals(vm.dir.path(), "net_eth0");
    let rng = metric_totals(vm.dir.path(), "entropy");
    let get = |m: &std::collections::BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    table.record(
        "chains: counters",
        "entropy execute_fails 3 needs_reset 6; net tx_fails 5, rx_fails >= 4, needs_reset 12, event_fails 0",
        &format!(
            "entropy execute_fails {} needs_reset {} event_fails {}; net tx_fails {} rx_fails {} needs_reset {} event_fails {}",
            get(&rng, "execute_fails"),
            get(&rng, "needs_reset_count"),
            get(&rng, "entropy_event_fails"),
            get(&net, "tx_fails"),
            get(&net, "rx_fails"),
            get(&net, "needs_reset_count"),
            get(&net, "event_fails")
        ),
        get(&rng, "execute_fails") == 3
            && get(&rng, "needs_reset_count") == 6
            && get(&rng, "entropy_event_fails") == 0
            && get(&net, "tx_fails") == 5
            && get(&net, "rx_fails") >= 4
            // One entry per broken case, none more (the probe resets a device before it
            // rewrites its rings, so a late kick cannot find avail.idx moved back).
            && get(&net, "needs_reset_count") == 12
            && get(&net, "event_fails") == 0,
    );
    latency_row(&mut table, "chains: API GET /", seen);
    table.record(
        "chains: VMM VmRSS",
        "grows < 64 MiB, still serving",
        &format!("before {rss_before} KiB, after {rss_after} KiB, FlushMetrics -> {flushed}"),
        rss_after < rss_before + RSS_GROWTH_KIB && flushed == 204,
    );
    if cases != [RNG_CASES, TX_CASES, RX_CASES] {
        println!(
            "--- probe stdout\n{}\n--- stderr\n{}",
            run.stdout, run.stderr
        );
    }
    table.finish();
}
