//! virtio-net and its firewall with the Linux guest's own driver and TCP/IP stack: one boot
//! per test on a real tap in a network namespace the test creates, the host side at
//! 10.0.0.1 (std sockets in that namespace), the guest at 10.0.0.2 with MAC
//! 06:00:0a:00:00:02, several in-guest checks (resources/guest/checks/) per boot. Slow on
//! hosts without VMX/SVM (~13 s to the guest's init on the dev host), hence few boots.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::netns::{net_totals, TapNetns, GUEST_MAC};
use common::{kvm_available, linux_guest_dir, GuestRun, TestVm};

const TIMEOUT: Duration = Duration::from_secs(600);

/// The security group of these tests: the guest may ping 10.0.0.1 and reach it on TCP 8000;
/// TCP 8001 is denied by a rule, everything else out and everything in by the defaults.
fn firewall() -> Value {
    json!({
        "allowed_ips": ["10.0.0.2/32"],
        "egress": [
            {"action": "allow", "proto": "tcp", "cidr": "10.0.0.1/32", "ports": "8000"},
            {"action": "deny", "proto": "tcp", "cidr": "10.0.0.0/24", "ports": "8001"},
            {"action": "allow", "proto": "icmp", "cidr": "10.0.0.1/32"}
        ],
        "default_egress": "deny",
        "default_ingress": "deny"
    })
}

/// The Linux guest (vmlinux + initramfs, 1 vCPU, 128 MiB) on `ns`'s tap0 with the
/// firewall above, configuring 10.0.0.2/24 and running `checks`; metrics to
/// DIR/metrics.json (read with net_totals).
fn linux_net_vm(ns: &TapNetns, checks: &str) -> TestVm {
    linux_net_vm_mtu(ns, checks, None)
}

/// The same, with the interface's `mtu` (VIRTIO_NET_F_MTU) when given.
fn linux_net_vm_mtu(ns: &TapNetns, checks: &str, mtu: Option<u16>) -> TestVm {
    let dir = linux_guest_dir();
    let boot_args = std::fs::read_to_string(dir.join("boot_args")).expect("boot_args");
    let mut vm = TestVm::new(json!({
        "boot-source": {
            "kernel_image_path": dir.join("vmlinux"),
            "initrd_path": dir.join("initramfs.cpio"),
            "boot_args": format!(
                "{} palisade.ip=10.0.0.2/24 palisade.gw=10.0.0.1 palisade.test={checks}",
                boot_args.trim()
            ),
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "network-interfaces": [{
            "iface_id": "eth0",
            "host_dev_name": "tap0",
            "guest_mac": GUEST_MAC,
            "mtu": mtu,
            "firewall": firewall(),
        }],
    }));
    let metrics = vm.dir.path().join("metrics.json");
    vm.args
        .extend(["--metrics-path".into(), metrics.to_str().unwrap().into()]);
    vm.netns = Some(ns.name.clone());
    vm
}

/// The VMM exited 0 after the guest configured eth0 and ran all its checks.
fn assert_ran_to_the_end(run: &GuestRun) {
    run.assert_success();
    for text in ["palisade-net: eth0 up: 10.0.0.2/24", "palisade-guest: done"] {
        assert!(
            run.stdout.contains(text),
            "no {text:?}\n--- stdout\n{}\n--- stderr\n{}",
            run.stdout,
            run.stderr
        );
    }
}

/// What the host side saw on one accepted connection.
#[derive(Debug)]
struct Conn {
    first_line: String,
    bytes: usize,
    secs: f64,
}

/// Accepts connections on 10.0.0.1:`port` in `ns` until `stop` is set (or 10 minutes).
/// Each connection: its first line is read, then `reply` (given that line) is written
/// back; with `drain`, everything up to EOF is counted and timed instead (first_line is
/// then left empty).
fn tcp_server(
    ns: &TapNetns,
    port: u16,
    drain: bool,
    stop: Arc<AtomicBool>,
    reply: impl Fn(&str) -> String + Send + 'static,
) -> std::thread::JoinHandle<Vec<Conn>> {
    let (ready, bound) = mpsc::channel();
    let handle = ns.run(move || {
        let listener = TcpListener::bind(("10.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        ready.send(()).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        let mut conns = Vec::new();
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => panic!("accept on {port}: {e}"),
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            let start = Instant::now();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first_line = String::new();
            let _ = reader.read_line(&mut first_line);
            let mut bytes = first_line.len();
            if drain {
                let mut sink = Vec::new();
                bytes += reader.read_to_end(&mut sink).unwrap_or(0);
                first_line.clear();
            } else {
                let mut out = &stream;
                let _ = writeln!(out, "{}", reply(first_line.trim_end()));
            }
            let secs = start.elapsed().as_secs_f64();
            let _ = stream.shutdown(std::net::Shutdown::Both);
            conns.push(Conn {
                first_line: first_line.trim_end().to_string(),
                bytes,
                secs,
            });
        }
        conns
    });
    bound.recv().unwrap();
    handle
}

/// The guest reaches the host on the allowed port and by ping (the replies come back in
/// through connection tracking although ingress is default-deny); the denied port does not
/// connect; the host cannot reach a listener in the guest; the drops are counted.
#[test]
fn linux_guest_reaches_allowed_ports_and_not_denied_ones() {
    let test = "linux_guest_reaches_allowed_ports_and_not_denied_ones";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    // The answer on 8000 waits for the outcome of the host's inbound attempt, so that the
    // guest's listener is still up while the host tries it.
    let (inbound_tx, inbound_rx) = mpsc::channel::<String>();
    let inbound_rx = std::sync::Mutex::new(inbound_rx);
    let allowed = tcp_server(&ns, 8000, false, stop.clone(), move |line| {
        let inbound = inbound_rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| "unknown".into());
        format!("host-got={line} inbound={inbound}")
    });
    let denied = tcp_server(&ns, 8001, false, stop.clone(), |_| "denied-port".into());

    // The interface's mtu reaches the guest's driver (VIRTIO_NET_F_MTU) and the flows
    // below still work under it.
    let vm = linux_net_vm_mtu(
        &ns,
        "mtu,inbound-listen,ping,tcp-allowed,tcp-denied,inbound-blocked",
        Some(1400),
    );
    let mut running = vm.spawn();
    running.wait_for_output("palisade-net: listening on 9000", TIMEOUT);
    let inbound = ns
        .run(|| {
            let addr: SocketAddr = "10.0.0.2:9000".parse().unwrap();
            match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                Ok(mut s) => {
                    let _ = s.write_all(b"intruder\n");
                    "connected".to_string()
                }
                Err(e) if e.kind() == ErrorKind::TimedOut => "timeout".to_string(),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => "refused".to_string(),
                Err(e) => format!("error:{}", e.kind()),
            }
        })
        .join()
        .unwrap();
    inbound_tx.send(inbound.clone()).unwrap();
    let run = running.wait(TIMEOUT);
    stop.store(true, Ordering::Relaxed);
    let allowed = allowed.join().unwrap();
    let denied = denied.join().unwrap();
    println!(
        "VMM exited after {:.1} s; inbound attempt: {inbound}; 8000: {allowed:?}",
        run.elapsed.as_secs_f64()
    );
    assert_ran_to_the_end(&run);

    // Inbound: the SYN to the guest's port 9000 was dropped (not refused by the guest, not
    // accepted), and the listener saw nothing.
    assert_eq!(run.assert_guest_pass("mtu"), "mtu=1400");
    assert_eq!(inbound, "timeout", "host -> guest:9000");
    run.assert_guest_pass("inbound-listen");
    let blocked = run.assert_guest_pass("inbound-blocked");
    assert_eq!(blocked, "listener=waiting received_bytes=0");

    // Outbound: ping and TCP 8000 work both ways, 8001 never connects.
    let ping = run.assert_guest_pass("ping");
    assert!(ping.contains("1 packets received"), "{ping}");
    let reply = run.assert_guest_pass("tcp-allowed");
    assert_eq!(reply, "reply=host-got=hello-from-guest inbound=timeout");
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    assert_eq!(allowed[0].first_line, "hello-from-guest");
    let refused = run.assert_guest_pass("tcp-denied");
    assert!(denied.is_empty(), "8001 accepted {denied:?} ({refused})");

    let m = net_totals(&vm);
    println!("{m:?}");
    // The SYNs to 8001 (the deny rule) and to the guest's 9000 (default ingress deny).
    assert!(m["fw_rule_deny"] >= 1, "{m:?}");
    assert!(m["fw_default_deny"] >= 1, "{m:?}");
    assert!(m["fw_ingress_drops"] >= 1, "{m:?}");
    assert!(m["fw_egress_drops"] >= 1, "{m:?}");
    for honest in ["fw_spoof_mac", "fw_spoof_ip", "fw_spoof_arp"] {
        assert_eq!(m[honest], 0, "{honest}: {m:?}");
    }
}

/// The guest changes its MAC, sends from an address outside allowed_ips and claims the
/// host's IP by gratuitous ARP: each is dropped and counted, and once its MAC is restored
/// the allowed TCP flow still works.
#[test]
fn linux_guest_spoofing_is_dropped_while_traffic_flows() {
    let test = "linux_guest_spoofing_is_dropped_while_traffic_flows";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let allowed = tcp_server(&ns, 8000, false, stop.clone(), |line| {
        format!("host-got={line}")
    });
    let vm = linux_net_vm(&ns, "ping,spoof,tcp-allowed");
    let run = vm.run(TIMEOUT);
    stop.store(true, Ordering::Relaxed);
    let allowed = allowed.join().unwrap();
    println!("VMM exited after {:.1} s", run.elapsed.as_secs_f64());
    assert_ran_to_the_end(&run);
    run.assert_guest_pass("ping");
    let spoof = run.assert_guest_pass("spoof");
    let reply = run.assert_guest_pass("tcp-allowed");
    assert_eq!(reply, "reply=host-got=hello-from-guest");
    assert_eq!(allowed.len(), 1, "{allowed:?}");

    let m = net_totals(&vm);
    println!("spoof: {spoof}; {m:?}");
    assert!(m["fw_spoof_mac"] >= 1, "{m:?}");
    assert!(m["fw_spoof_ip"] >= 1, "{m:?}");
    if spoof.contains("garp=sent") {
        assert!(m["fw_spoof_arp"] >= 1, "{m:?}");
    }
}

/// Guest -> host TCP throughput (2 MiB through busybox nc): a measurement, no assertion on
/// speed. Run by hand: `cargo test --test net_linux -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a test; run by hand with --ignored --nocapture"]
fn linux_guest_tcp_throughput_to_host() {
    let test = "linux_guest_tcp_throughput_to_host";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sink = tcp_server(&ns, 8000, true, stop.clone(), |_| String::new());
    let vm = linux_net_vm(&ns, "tcp-throughput");
    let run = vm.run(TIMEOUT);
    stop.store(true, Ordering::Relaxed);
    let conns = sink.join().unwrap();
    println!("host side: {conns:?}");
    assert_ran_to_the_end(&run);
    let guest = run.assert_guest_pass("tcp-throughput");
    assert_eq!(conns.len(), 1, "{conns:?}");
    let c = &conns[0];
    assert_eq!(c.bytes, 2 << 20, "{c:?}");
    println!(
        "guest -> host TCP: {} bytes in {:.2} s = {:.1} KB/s (host side); guest dd: {guest}",
        c.bytes,
        c.secs,
        c.bytes as f64 / c.secs / 1e3
    );
}
