//! The hostile suite's vsock group: the probe's `vsock-hostile` packets (wrong CIDs, bad types
//! and ops, header and length lies, lying credit, a flood past the credit, an RX buffer shorter
//! than a header), each judged against what Palisade must do (refuse, drop or reset, never
//! answer as Firecracker does) and followed by a good connection; `vsock-stall`, a guest that
//! stops reading while the host writes 32 MiB; `vsock-many` against `max_connections`; and host
//! clients that never finish their `CONNECT` line. The API's latency and the VMM's memory are
//! measured throughout, as for the other devices.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::common::vsock::{fields, host_connect, pattern, wait_for_line};
use super::common::TestVm;
use super::host::ApiWatch;
use super::{
    api_probe, can_attack, flush_metrics, latency_row, metric_totals, spawn_with_api, watched_run,
    Table, RSS_GROWTH_KIB, TIMEOUT,
};
use crate::common::rss_kib;

const CID: u32 = 3;
const PORT: u32 = 5000;

/// A probe VM for `scenarios` (API socket, metrics file) with a vsock device at DIR/v.sock.
fn vsock_probe(scenarios: &str, params: &str, policy: Option<Value>) -> (TestVm, PathBuf) {
    let mut vm = api_probe(scenarios, params);
    let uds = vm.dir.path().join("v.sock");
    vm.config["vsock"] = json!({"guest_cid": CID, "uds_path": uds});
    if let Some(policy) = policy {
        vm.config["vsock"]["policy"] = policy;
    }
    (vm, uds)
}

/// A host listener at `<uds>_<port>` that reads every connection to its end and counts them.
struct DrainListener {
    accepted: Arc<AtomicUsize>,
}

impl DrainListener {
    fn start(uds: &Path, port: u32) -> Self {
        let listener = UnixListener::bind(format!("{}_{port}", uds.display())).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut chunk = vec![0u8; 65536];
                    while matches!(stream.read(&mut chunk), Ok(n) if n > 0) {}
                });
            }
        });
        Self { accepted }
    }
}

/// The vsock-hostile cases in the probe's order: name, the attack, what Palisade must do,
/// and the observations (the probe's `saw=`) that mean it did.
const CASES: &[(&str, &str, &str, &[&str])] = &[
    (
        "src-cid-wrong",
        "REQUEST from src_cid 1003, not the guest's",
        "refused (RST or drop), never RESPONSE",
        &["rst", "nothing"],
    ),
    (
        "src-cid-host",
        "REQUEST from src_cid 2, posing as the host",
        "refused (RST or drop), never RESPONSE",
        &["rst", "nothing"],
    ),
    (
        "dst-cid-other-guest",
        "REQUEST to CID 4, another guest",
        "dropped (as Firecracker does): no RST that would come from that CID",
        &["nothing"],
    ),
    (
        "dst-cid-any",
        "REQUEST to CID 0xffffffff (ANY)",
        "dropped (as Firecracker does): no RST that would come from that CID",
        &["nothing"],
    ),
    (
        "dst-cid-hypervisor",
        "REQUEST to CID 0 (hypervisor)",
        "dropped (as Firecracker does): no RST that would come from that CID",
        &["nothing"],
    ),
    (
        "type-seqpacket",
        "REQUEST of type SEQPACKET",
        "RST or drop",
        &["rst", "nothing"],
    ),
    (
        "type-zero",
        "REQUEST of type 0",
        "RST or drop",
        &["rst", "nothing"],
    ),
    (
        "op-unknown-no-conn",
        "op 42 outside any connection",
        "RST or drop",
        &["rst", "nothing"],
    ),
    (
        "rw-no-connection",
        "RW of 16 bytes outside any connection",
        "RST or drop",
        &["rst", "nothing"],
    ),
    (
        "response-unsolicited",
        "RESPONSE nobody asked for",
        "RST or drop",
        &["rst", "nothing"],
    ),
    (
        "hdr-short",
        "a 20-byte header",
        "dropped (or RST)",
        &["rst", "nothing"],
    ),
    (
        "op-unknown",
        "op 42 on an open connection",
        "RST or drop",
        &["rst", "nothing"],
    ),
    (
        "rw-len-without-data",
        "RW claiming 64 bytes with no data descriptor",
        "dropped or reset",
        &["rst", "nothing"],
    ),
    (
        "rw-len-beyond-chain",
        "RW claiming 4096 bytes in a 100-byte chain",
        "dropped or reset",
        &["rst", "nothing"],
    ),
    (
        "rw-oversized-1mib",
        "RW of 1 MiB (over the 64 KiB packet maximum)",
        "dropped or reset",
        &["rst", "nothing"],
    ),
    (
        "rw-len-max",
        "RW claiming u32::MAX bytes",
        "dropped or reset",
        &["rst", "nothing"],
    ),
    (
        "credit-fwd-cnt-lie",
        "CREDIT_UPDATE: fwd_cnt 0x7fff0000 (more than was sent), buf_alloc u32::MAX",
        "connection reset",
        &["rst"],
    ),
    (
        "buf-alloc-zero-flood",
        "buf_alloc 0, then 64 x 64 KiB RW without waiting for the host's credit",
        "reset, or taken only as fast as the host drains it (never buffered past 128 KiB)",
        &["rst", "credit-update", "nothing"],
    ),
    (
        "rx-buffer-short",
        "a 20-byte RX buffer among good ones",
        "never overflowed: refused with length 0 or not used (the 48 CREDIT_REQUESTs may \
         coalesce into one CREDIT_UPDATE), RX keeps flowing",
        &[
            "short-rx-len-0",
            "short-rx-len-le-20",
            "short-rx-kept",
            "needs-reset",
        ],
    ),
];

#[test]
fn vsock_hostile_packets_are_refused_dropped_or_reset_and_a_good_connection_follows_each() {
    let test =
        "vsock_hostile_packets_are_refused_dropped_or_reset_and_a_good_connection_follows_each";
    if !can_attack(test) {
        return;
    }
    let mut table = Table::default();
    let (vm, uds) = vsock_probe("vsock-hostile,idle", "probe.port=5000", None);
    let host = DrainListener::start(&uds, PORT);
    let run = watched_run(&mut table, &vm, "vsock-hostile");
    let mut cases = 0;
    for (name, attack, expected, allowed) in CASES {
        let prefix = format!("probe: vsock-hostile case {name} ");
        let line = run
            .stdout
            .lines()
            .find_map(|l| l.trim_end().strip_prefix(&prefix))
            .unwrap_or("saw=missing good=missing");
        let f = fields(line);
        let saw = f.get("saw").map_or("missing", String::as_str);
        let good = f.get("good").map_or("missing", String::as_str);
        table.record(
            &format!("vsock-hostile: {name}: {attack}"),
            &format!("{expected}; then a good connection"),
            line,
            allowed.contains(&saw) && good == "ok",
        );
        cases += usize::from(saw != "missing");
    }
    let result = run
        .probe_result("vsock-hostile")
        .unwrap_or("no result")
        .trim_end();
    table.record(
        "vsock-hostile: all cases, the host listening at <uds_path>_5000",
        "19 cases, probe ok, the host saw the good connections",
        &format!(
            "{cases} cases, probe {result}, host accepted {}",
            host.accepted.load(Ordering::SeqCst)
        ),
        cases == CASES.len()
            && result == format!("ok cases={}", CASES.len())
            && host.accepted.load(Ordering::SeqCst) >= CASES.len(),
    );
    let m = metric_totals(vm.dir.path(), "vsock");
    let get = |k: &str| m.get(k).copied().unwrap_or(0);
    table.record(
        "vsock-hostile: metrics vsock",
        "bad_src_cid >= 2, bad_dst_cid >= 3, bad_type >= 2, bad_header_short >= 1, \
         bad_len >= 3, the credit lie counted and reset (credit_lies >= 1, \
         conns_reset_by_host >= 1)",
        &format!(
            "bad_src_cid={} bad_dst_cid={} bad_type={} bad_op={} bad_header_short={} bad_len={} \
             credit_lies={} credit_overrun={} conns_reset_by_host={} unexpected_packets={} \
             bad_rx_chain={}",
            get("bad_src_cid"),
            get("bad_dst_cid"),
            get("bad_type"),
            get("bad_op"),
            get("bad_header_short"),
            get("bad_len"),
            get("credit_lies"),
            get("credit_overrun"),
            get("conns_reset_by_host"),
            get("unexpected_packets"),
            get("bad_rx_chain"),
        ),
        get("bad_src_cid") >= 2
            && get("bad_dst_cid") >= 3
            && get("bad_type") >= 2
            && get("bad_header_short") >= 1
            && get("bad_len") >= 3
            && get("credit_lies") >= 1
            && get("conns_reset_by_host") >= 1,
    );
    if cases != CASES.len() {
        println!(
            "--- probe stdout\n{}\n--- stderr\n{}",
            run.stdout, run.stderr
        );
    }
    table.finish();
}

#[test]
fn a_vsock_guest_that_stops_reading_costs_bounded_memory_and_is_never_sent_past_its_credit() {
    let test =
        "a_vsock_guest_that_stops_reading_costs_bounded_memory_and_is_never_sent_past_its_credit";
    if !can_attack(test) {
        return;
    }
    const SENT: usize = 32 << 20;
    let mut table = Table::default();
    let (vm, uds) = vsock_probe(
        "vsock-stall,idle",
        &format!("probe.port=5000 probe.secs=3 probe.bytes={SENT}"),
        None,
    );
    let mut running = spawn_with_api(&vm);
    running.wait_for_output("probe: vsock-stall ready", TIMEOUT);
    let pid = running.child.id();
    let rss_before = rss_kib(pid);
    let stream = host_connect(&uds, PORT).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let ok = writer.write_all(&pattern(SENT, 0)).is_ok();
        let _ = writer.shutdown(std::net::Shutdown::Write);
        ok
    });
    running.wait_for_output("probe: vsock-stall accepted", TIMEOUT);
    let watch = ApiWatch::start(vm.dir.path().join("api.sock"));
    let held = wait_for_line(&mut running, "probe: vsock-stall not-polling", TIMEOUT);
    let rss_stalled = rss_kib(pid);
    let sender_blocked = !sender.is_finished();
    running.wait_for_output("probe: vsock-stall resumed", TIMEOUT);
    let during = watch.stop();
    running.wait_for_output("probe: idle ok", TIMEOUT);
    let sent = sender.join().unwrap();
    let flushed = flush_metrics(&vm);
    let run = running.kill();
    drop(stream);
    let line = run
        .probe_result("vsock-stall")
        .unwrap_or("no result")
        .trim_end()
        .to_string();

    latency_row(
        &mut table,
        "vsock-stall: API GET / while the guest stalls",
        during,
    );
    table.record(
        "vsock-stall: host writes 32 MiB to a guest that stops reading",
        "VmRSS grows < 64 MiB; the host's writes block (the VMM holds at most the credit)",
        &format!(
            "before {rss_before} KiB, stalled {rss_stalled} KiB, host writer blocked={sender_blocked}, \
             FlushMetrics -> {flushed}"
        ),
        rss_stalled < rss_before + RSS_GROWTH_KIB && sender_blocked && flushed == 204,
    );
    let f = fields(&line);
    let over = fields(&held)
        .get("over_credit")
        .cloned()
        .unwrap_or_default();
    table.record(
        "vsock-stall: credit while the guest consumes nothing (64 KiB buf_alloc)",
        "over_credit=0, held <= 65536, then all 32 MiB arrive",
        &line,
        over == "0"
            && f.get("over_credit").map(String::as_str) == Some("0")
            && f.get("held")
                .and_then(|h| h.parse::<u64>().ok())
                .is_some_and(|h| h <= 65536)
            && f.get("received") == Some(&SENT.to_string())
            && sent,
    );
    table.finish();
}

#[test]
fn vsock_many_opens_exactly_max_connections_and_the_rest_get_rst() {
    let test = "vsock_many_opens_exactly_max_connections_and_the_rest_get_rst";
    if !can_attack(test) {
        return;
    }
    const CAP: u32 = 8;
    let mut table = Table::default();
    let (vm, uds) = vsock_probe(
        "vsock-many,idle",
        "probe.port=5000 probe.count=40",
        Some(json!({"max_connections": CAP})),
    );
    let _host = DrainListener::start(&uds, PORT);
    let run = watched_run(&mut table, &vm, "vsock-many");
    let detail = run
        .probe_result("vsock-many")
        .unwrap_or("no result")
        .trim_end();
    let f = fields(detail);
    table.record(
        &format!("vsock-many: guest opens up to 40 connections, max_connections {CAP}"),
        &format!("exactly {CAP} opened, the next refused with RST, a slot reopens after closing"),
        detail,
        detail.starts_with("ok ")
            && f.get("opened") == Some(&CAP.to_string())
            && f.get("refused").map(String::as_str) == Some("rst")
            && f.get("reopen").map(String::as_str) == Some("ok"),
    );
    let m = metric_totals(vm.dir.path(), "vsock");
    let get = |k: &str| m.get(k).copied().unwrap_or(0);
    table.record(
        "vsock-many: metrics vsock",
        &format!(
            "refused_max_connections >= 1, conns_opened_guest = {}",
            CAP + 1
        ),
        &format!(
            "refused_max_connections={} conns_opened_guest={}",
            get("refused_max_connections"),
            get("conns_opened_guest")
        ),
        get("refused_max_connections") >= 1 && get("conns_opened_guest") == u64::from(CAP + 1),
    );
    table.finish();
}

/// `n` host clients that each send half a `CONNECT` line and then nothing, holding their
/// sockets open. A client past the VMM's handshake pool is accepted and closed at once, so
/// its write may fail with EPIPE (or its connect with ECONNRESET): that is the refusal the
/// attack expects, not an error of the test; `still_open` counts what the VMM kept.
fn stuck_clients(uds: &Path, n: usize) -> Vec<UnixStream> {
    (0..n)
        .filter_map(|_| {
            let mut s = UnixStream::connect(uds).ok()?;
            // Refused clients see EPIPE here; they stay in the list as closed sockets.
            let _ = s.write_all(b"CONNECT 50");
            Some(s)
        })
        .collect()
}

/// How many of `clients` the VMM has not closed.
fn still_open(clients: &[UnixStream]) -> usize {
    clients
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            // Open: nothing to read (WouldBlock); closed by the VMM: 0 bytes or an error.
            matches!((&**s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

/// `CONNECT 5000` on `uds` without panicking when the VMM closes the socket first (a full
/// handshake pool refuses by closing): the stream after `OK`, or None.
fn try_host_connect(uds: &Path) -> Option<UnixStream> {
    let mut s = UnixStream::connect(uds).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(format!("CONNECT {PORT}\n").as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\n") {
        match s.read(&mut byte) {
            Ok(1) => reply.push(byte[0]),
            _ => return None,
        }
    }
    if !reply.starts_with(b"OK ") {
        return None;
    }
    s.set_read_timeout(None).ok()?;
    Some(s)
}

/// An honest host client: `CONNECT 5000` retried until OK or `within` passed. The stream
/// (None when refused throughout), how long it took, and the attempts.
fn honest_client(uds: &Path, within: Duration) -> (Option<UnixStream>, Duration, u32) {
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match try_host_connect(uds) {
            Some(s) => return (Some(s), start.elapsed(), attempts),
            None if start.elapsed() < within => {
                // Polls the VMM's answer; the wait is the retry interval, not a synchronisation.
                std::thread::sleep(Duration::from_millis(50));
            }
            None => return (None, start.elapsed(), attempts),
        }
    }
}

/// Boots a guest running vsock-many (40 connections to `<uds_path>_5000`, default cap 64);
/// when the host listener accepts the guest's first connection, `n` stuck host clients
/// connect to `uds_path` and stay. The probe's result and how many stuck clients connected.
fn guest_connects_among_stuck_clients(n: usize) -> (String, usize) {
    let (vm, uds) = vsock_probe("vsock-many", "probe.port=5000 probe.count=40", None);
    let listener = UnixListener::bind(format!("{}_{PORT}", uds.display())).unwrap();
    let stuck = Arc::new(std::sync::Mutex::new(Vec::new()));
    let held = stuck.clone();
    let vmm_sock = uds.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut held = held.lock().unwrap();
            if held.is_empty() {
                held.extend((0..n).filter_map(|_| {
                    let mut s = UnixStream::connect(&vmm_sock).ok()?;
                    s.write_all(b"CONNECT 50").ok()?;
                    Some(s)
                }));
            }
            std::thread::spawn(move || {
                let mut chunk = vec![0u8; 65536];
                while matches!(stream.read(&mut chunk), Ok(n) if n > 0) {}
            });
        }
    });
    let run = vm.run(TIMEOUT);
    let result = run
        .probe_result("vsock-many")
        .unwrap_or("no result")
        .trim_end()
        .to_string();
    let connected = stuck.lock().unwrap().len();
    (result, connected)
}

#[test]
fn host_clients_stuck_in_their_connect_line_do_not_keep_the_guest_from_connecting() {
    let test = "host_clients_stuck_in_their_connect_line_do_not_keep_the_guest_from_connecting";
    if !can_attack(test) {
        return;
    }
    // More stuck clients than the default cap (64) of connections at once.
    const STUCK: usize = 100;
    let mut table = Table::default();
    let (vm, uds) = vsock_probe(
        "vsock-echo,idle",
        "probe.port=5000 probe.count=1 probe.secs=20",
        None,
    );
    let mut running = spawn_with_api(&vm);
    running.wait_for_output("probe: vsock-echo ready", TIMEOUT);
    let pid = running.child.id();
    let rss_before = rss_kib(pid);
    let watch = ApiWatch::start(vm.dir.path().join("api.sock"));
    let stuck = stuck_clients(&uds, STUCK);
    // An honest host client behind them must reach the guest's vsock-echo (retrying while
    // the stuck ones run out their deadline).
    let (honest, took, attempts) = honest_client(&uds, Duration::from_secs(10));
    let echoed = honest.as_ref().is_some_and(|s| {
        let data = pattern(4096, 7);
        let mut s = s.try_clone().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&data).unwrap();
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).is_ok() && back == data
    });
    let stuck_open = still_open(&stuck);
    drop(honest);
    running.wait_for_output("probe: idle ok", TIMEOUT);
    let during = watch.stop();
    let rss_after = rss_kib(pid);
    let flushed = flush_metrics(&vm);
    drop(stuck);
    let run = running.kill();

    table.record(
        &format!("vsock: {STUCK} host clients send 'CONNECT 50' without the newline and wait"),
        "an honest host client still gets OK (within 10 s, retrying) and echoes 4 KiB",
        &format!(
            "CONNECT -> {} after {:.0} ms and {attempts} attempts, echo intact={echoed}; \
             stuck clients the VMM had not closed by then: {stuck_open}",
            if echoed { "OK" } else { "refused" },
            took.as_secs_f64() * 1000.0
        ),
        echoed,
    );
    latency_row(&mut table, "vsock stuck CONNECT lines: API GET /", during);
    table.record(
        "vsock stuck CONNECT lines: VMM VmRSS",
        "grows < 64 MiB, still serving",
        &format!("before {rss_before} KiB, after {rss_after} KiB, FlushMetrics -> {flushed}"),
        rss_after < rss_before + RSS_GROWTH_KIB && flushed == 204,
    );
    if !echoed {
        println!(
            "--- probe stdout\n{}\n--- stderr\n{}",
            run.stdout, run.stderr
        );
    }
    // The guest connects out while stuck host clients arrive (a second boot: the probe resets
    // its device at each scenario's start, which drops host clients still in their line).
    let (many, stuck_during) = guest_connects_among_stuck_clients(STUCK);
    table.record(
        &format!(
            "vsock: {STUCK} stuck CONNECT lines arrive as the guest opens 40 connections \
             (max_connections 64)"
        ),
        "the guest opens all 40 (stuck host clients never take the guest's places)",
        &format!("{many}; stuck clients connected meanwhile: {stuck_during}"),
        many.starts_with("ok ") && fields(&many).get("opened").map(String::as_str) == Some("40"),
    );
    table.finish();
}
