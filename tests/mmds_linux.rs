//! MMDS end to end with the Linux test guest's own TCP/IP stack (issue 15's Linux tests), on
//! real taps in network namespaces the test creates. In the guest, busybox `nc` (run through
//! the agent over vsock) speaks HTTP to 169.254.169.254:80 (tests/common/mmds_guest.rs).
//!
//! Boots are slow on hosts without VMX/SVM (~15-25 s to the agent), so the checks are grouped
//! into three guests, at most two running at once:
//! - guest A (V2, the default): eth0 with MMDS behind a deny-all egress firewall, eth1 with
//!   MMDS, eth2 without (not in `network_interfaces`), all three taps in one namespace with a
//!   host listener on port 80; guest B (V2, eth0) in its own namespace, booted beside A, for
//!   the token from another VM. Each named check runs to its end and the test fails listing
//!   every check that failed; every refusal is checked beside its positive control on the
//!   same guest, so a 401 means "refused", not "broken".
//! - guest C (`"version": "V1"` with `imds_compat`): reads without a token, text listing.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::agent::{exec, sh, wait_for_agent};
use common::linux::boot_source;
use common::mmds_guest::{
    add_tap, body_of, guest_get, guest_http, guest_token, guest_token_response, net_totals, ns_ip,
    status_of, HostListener, MMDS_IP,
};
use common::netns::TapNetns;
use common::{kvm_available, ApiVm};

const TIMEOUT: Duration = Duration::from_secs(600);
/// What the host listener behind every tap of guest A says.
const HOST_BANNER: &str = "host-side-of-the-tap\n";
/// Two guests run at once at most (the tests of this file take it in turn).
static GUEST_SLOTS: Mutex<()> = Mutex::new(());

fn metadata() -> Value {
    json!({"latest": {"meta-data": {"instance-id": "i-palisade", "zone": "z1"}}})
}

/// A guest booting under a VMM with the API, its vsock socket and metrics file.
struct Guest {
    vm: ApiVm,
    uds: PathBuf,
    metrics: PathBuf,
}

impl Guest {
    /// Starts a VMM in `ns`, configures it through the API (the interfaces `ifaces`, vsock,
    /// `mmds_config` and the metadata) and starts the instance; does not wait for it.
    fn start(ns: &TapNetns, boot_args: &str, ifaces: &[Value], mmds_config: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Short: uds_path has at most 96 bytes.
        let uds = dir.path().join("v.sock");
        let metrics = dir.path().join("metrics.json");
        let vm = ApiVm::start_in_netns(
            dir,
            Some(&ns.name),
            &["--metrics-path", metrics.to_str().unwrap()],
        );
        let mut puts = vec![
            (
                "/machine-config".to_string(),
                json!({"vcpu_count": 1, "mem_size_mib": 128}),
            ),
            ("/boot-source".to_string(), boot_source(boot_args)),
        ];
        for iface in ifaces {
            let id = iface["iface_id"].as_str().unwrap();
            puts.push((format!("/network-interfaces/{id}"), iface.clone()));
        }
        puts.push((
            "/vsock".to_string(),
            json!({"guest_cid": 3, "uds_path": uds}),
        ));
        puts.push(("/mmds/config".to_string(), mmds_config));
        puts.push(("/mmds".to_string(), metadata()));
        let mut c = vm.client();
        for (path, body) in puts {
            let r = c.put(&path, body);
            assert_eq!(r.status, 204, "PUT {path}: {}", r.body);
        }
        let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
        assert_eq!(r.status, 204, "{}", r.body);
        Self { vm, uds, metrics }
    }

    /// Waits for eth0 and the agent.
    fn wait_ready(&mut self) {
        self.vm
            .running
            .wait_for_output("palisade-net: eth0 up", TIMEOUT);
        wait_for_agent(&self.uds, TIMEOUT);
    }

    /// Interface `iface`'s counters so far (flushes the metrics first).
    fn counters(&self, iface: &str) -> BTreeMap<String, u64> {
        let r = self
            .vm
            .client()
            .put("/actions", json!({"action_type": "FlushMetrics"}));
        assert_eq!(r.status, 204, "{}", r.body);
        net_totals(&self.metrics, iface)
    }

    fn uds(&self) -> &Path {
        &self.uds
    }
}

fn counter(m: &BTreeMap<String, u64>, name: &str) -> u64 {
    m.get(name).copied().unwrap_or(0)
}

/// Named checks that each run to their end; the test fails at the end, naming every check
/// that failed.
#[derive(Default)]
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn run(&mut self, name: &str, check: impl FnOnce()) {
        let start = Instant::now();
        match catch_unwind(AssertUnwindSafe(check)) {
            Ok(()) => println!(
                "check {name}: pass ({:.1} s)",
                start.elapsed().as_secs_f64()
            ),
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                println!("check {name}: FAIL {why}");
                self.failed.push(format!("{name}: {why}"));
            }
        }
    }

    fn finish(self) {
        assert!(
            self.failed.is_empty(),
            "failed checks:\n{}",
            self.failed.join("\n")
        );
    }
}

/// The guest's IPv4 and ICMP counters from /proc/net/snmp, as `Ip.InHdrErrors` etc.
fn guest_snmp(uds: &Path) -> BTreeMap<String, u64> {
    let text = sh(uds, "cat /proc/net/snmp");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = BTreeMap::new();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((proto, names)), Some((_, values))) =
            (names.split_once(": "), values.split_once(": "))
        else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = value.parse::<i64>() {
                out.insert(format!("{proto}.{name}"), v.max(0) as u64);
            }
        }
    }
    out
}

/// A TCP connection from the guest to `addr`:80 with stdin closed: what the peer sent.
fn guest_nc_stdout(uds: &Path, addr: &str) -> String {
    exec(
        uds,
        &[
            "sh",
            "-c",
            &format!("timeout 8 nc -w 4 {addr} 80 </dev/null"),
        ],
    )
    .unwrap()
    .stdout
}

/// Guest A's interfaces: eth0 (tap0, 10.0.0.0/24) with MMDS and a firewall that allows no
/// egress at all, eth1 (tap1, 10.0.1.0/24) with MMDS and no firewall object, eth2 (tap2,
/// 10.0.2.0/24) without MMDS.
fn guest_a_interfaces() -> Vec<Value> {
    vec![
        json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:0a:00:00:02",
               "firewall": {"allowed_ips": ["10.0.0.2/32"], "default_egress": "deny"}}),
        json!({"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "06:00:0a:00:01:02"}),
        json!({"iface_id": "eth2", "host_dev_name": "tap2", "guest_mac": "06:00:0a:00:02:02"}),
    ]
}

#[test]
fn v2_guests_read_metadata_only_with_a_live_token_of_their_own_vm_and_interface_and_only_on_mmds_interfaces(
) {
    let test = "v2_guests_read_metadata_only_with_a_live_token_of_their_own_vm_and_interface_and_only_on_mmds_interfaces";
    if !kvm_available(test) {
        return;
    }
    let Some(ns_a) = TapNetns::create(test) else {
        return;
    };
    let Some(ns_b) = TapNetns::create(test) else {
        return;
    };
    let _slots = GUEST_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    add_tap(&ns_a, "tap1", "10.0.1.1/24");
    add_tap(&ns_a, "tap2", "10.0.2.1/24");
    let _listener = HostListener::start(&ns_a, 80, HOST_BANNER);

    let boot = Instant::now();
    let mut a = Guest::start(
        &ns_a,
        "palisade.ip=10.0.0.2/24",
        &guest_a_interfaces(),
        json!({"network_interfaces": ["eth0", "eth1"]}),
    );
    let mut b = Guest::start(
        &ns_b,
        "palisade.ip=10.0.0.2/24 palisade.gw=10.0.0.1",
        &[json!({"iface_id": "eth0", "host_dev_name": "tap0",
                 "guest_mac": "06:00:0a:00:00:02"})],
        json!({"network_interfaces": ["eth0"]}),
    );
    a.wait_ready();
    b.wait_ready();
    println!(
        "guests A and B ready {:.1} s after start",
        boot.elapsed().as_secs_f64()
    );
    // eth1 and eth2 up; the MMDS address routed out of eth0 until a check says otherwise.
    let macs = sh(
        a.uds(),
        "ip addr add 10.0.1.2/24 dev eth1 && ip link set eth1 up && \
         ip addr add 10.0.2.2/24 dev eth2 && ip link set eth2 up && \
         ip route add 169.254.169.254 dev eth0 && \
         cat /sys/class/net/eth0/address /sys/class/net/eth1/address /sys/class/net/eth2/address",
    );
    assert_eq!(
        macs, "06:00:0a:00:00:02\n06:00:0a:00:01:02\n06:00:0a:00:02:02\n",
        "the guest's eth0..eth2 are the configured interfaces in order"
    );
    let a_uds = a.uds().to_path_buf();
    let ua = a_uds.as_path();
    let mut checks = Checks::default();

    checks.run("v2_get_without_a_token_is_401_and_with_one_200", || {
        let refused = guest_http(
            ua,
            &["GET /latest/meta-data HTTP/1.1", "Host: 169.254.169.254"],
        );
        assert_eq!(status_of(&refused), 401, "{refused}");
        assert!(
            body_of(&refused).starts_with("No MMDS token provided."),
            "{refused}"
        );
        let token = guest_token(ua, 60);
        let got = guest_get(ua, "/latest/meta-data", Some(&token));
        assert_eq!(status_of(&got), 200, "{got}");
        let body: Value = serde_json::from_str(body_of(&got)).unwrap();
        assert_eq!(body, json!({"instance-id": "i-palisade", "zone": "z1"}));
        // The EC2 header name works too.
        let got = guest_http(
            ua,
            &[
                "GET /latest/meta-data/instance-id HTTP/1.1",
                "Host: 169.254.169.254",
                &format!("X-aws-ec2-metadata-token: {token}"),
            ],
        );
        assert_eq!(status_of(&got), 200, "{got}");
        assert_eq!(body_of(&got), "i-palisade");
    });

    checks.run(
        "patch_through_the_api_after_boot_is_what_the_next_get_sees",
        || {
            let r = a.vm.client().patch(
                "/mmds",
                json!({"latest": {"meta-data": {"instance-id": "i-patched", "zone": null}}}),
            );
            assert_eq!(r.status, 204, "{}", r.body);
            let token = guest_token(ua, 60);
            let got = guest_get(ua, "/latest/meta-data", Some(&token));
            assert_eq!(status_of(&got), 200, "{got}");
            let body: Value = serde_json::from_str(body_of(&got)).unwrap();
            assert_eq!(body, json!({"instance-id": "i-patched"}));
        },
    );

    checks.run(
        "token_with_ttl_1_works_at_once_and_is_401_after_it_expires",
        || {
            // In one guest script, so that only the guest's own `sleep 2` separates the two
            // GETs. The first GET's connection is open before the token is asked for (its
            // request waits in a fifo), so "at once" is one segment after the token arrived;
            // uptime stamps: PUT sent, token read, first GET answered.
            let script = "printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\n\
X-metadata-token-ttl-seconds: 1\\r\\n\\r\\n' >/tmp/put
rm -f /tmp/getfifo && mkfifo /tmp/getfifo || exit 1
exec 3<>/tmp/getfifo
nc -w 5 169.254.169.254 80 </tmp/getfifo >/tmp/fresh 3>&- &
getter=$!
read -r t0 _ </proc/uptime
nc -w 5 169.254.169.254 80 </tmp/put >/tmp/tok || exit 1
tok= line=
while IFS= read -r line || [ -n \"$line\" ]; do tok=$line; done </tmp/tok
read -r t1 _ </proc/uptime
printf 'GET /latest/meta-data/instance-id HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\n\
X-metadata-token: %s\\r\\n\\r\\n' \"$tok\" >&3
exec 3>&-
wait $getter || exit 1
read -r t2 _ </proc/uptime
printf 'GET /latest/meta-data/instance-id HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\n\
X-metadata-token: %s\\r\\n\\r\\n' \"$tok\" >/tmp/get
sleep 2
nc -w 5 169.254.169.254 80 </tmp/get >/tmp/expired || exit 1
echo \"$t0 $t1 $t2\"";
            let times = sh(ua, script);
            println!("token ttl 1: guest uptimes at PUT, token, fresh GET answered: {times}");
            let fresh = sh(ua, "cat /tmp/fresh");
            let expired = sh(ua, "cat /tmp/expired");
            assert_eq!(status_of(&fresh), 200, "fresh: {fresh}");
            assert_eq!(body_of(&fresh), "i-patched");
            assert_eq!(status_of(&expired), 401, "expired: {expired}");
            assert_eq!(body_of(&expired), "MMDS token not valid.", "{expired}");
        },
    );

    checks.run("token_put_with_x_forwarded_for_is_400", || {
        let refused = guest_token_response(ua, 60, &["X-Forwarded-For: 10.0.0.9"]);
        assert_eq!(status_of(&refused), 400, "{refused}");
        assert_eq!(
            body_of(&refused),
            "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For"
        );
        // The same PUT without it: a token.
        guest_token(ua, 60);
    });

    checks.run(
        "token_from_eth0_is_401_on_eth1_whose_own_token_is_200",
        || {
            let eth0_token = guest_token(ua, 60);
            sh(ua, "ip route replace 169.254.169.254 dev eth1");
            let before = a.counters("eth1");
            let refused = guest_get(ua, "/latest/meta-data", Some(&eth0_token));
            let eth1_token = guest_token(ua, 60);
            let got = guest_get(ua, "/latest/meta-data", Some(&eth1_token));
            let eth1_refused_on_eth0 = {
                sh(ua, "ip route replace 169.254.169.254 dev eth0");
                guest_get(ua, "/latest/meta-data", Some(&eth1_token))
            };
            let after = a.counters("eth1");
            assert_eq!(status_of(&refused), 401, "eth0's token on eth1: {refused}");
            assert_eq!(body_of(&refused), "MMDS token not valid.");
            assert_eq!(status_of(&got), 200, "eth1's token on eth1: {got}");
            assert_eq!(
                status_of(&eth1_refused_on_eth0),
                401,
                "eth1's token on eth0: {eth1_refused_on_eth0}"
            );
            // The requests went to eth1's responder (the route took them there).
            assert!(
                counter(&after, "mmds_frames_in") > counter(&before, "mmds_frames_in"),
                "{before:?} -> {after:?}"
            );
        },
    );

    checks.run(
        "deny_all_egress_still_reaches_mmds_but_not_the_tap_host",
        || {
            let before = a.counters("eth0");
            // The host listener answers through eth1 (no firewall)...
            let via_eth1 = guest_nc_stdout(ua, "10.0.1.1");
            assert_eq!(via_eth1, HOST_BANNER, "the positive control through eth1");
            // ...and is unreachable through eth0, whose egress policy denies everything...
            let via_eth0 = guest_nc_stdout(ua, "10.0.0.1");
            // ...where MMDS still answers.
            let token = guest_token(ua, 60);
            let got = guest_get(ua, "/latest/meta-data/instance-id", Some(&token));
            let after = a.counters("eth0");
            println!("eth0 before {before:?}\neth0 after {after:?}");
            assert_eq!(via_eth0, "", "TCP to 10.0.0.1 through eth0 got an answer");
            assert!(
                counter(&after, "fw_egress_drops") > counter(&before, "fw_egress_drops"),
                "the firewall dropped nothing: {before:?} -> {after:?}"
            );
            assert_eq!(status_of(&got), 200, "{got}");
            assert!(counter(&after, "mmds_frames_in") >= counter(&before, "mmds_frames_in") + 6);
        },
    );

    checks.run(
        "mmds_address_routed_out_of_an_unlisted_interface_reaches_its_tap_and_its_tenant_rules",
        || {
            // The namespace owns 169.254.169.254 on tap2: whatever answers there is the host.
            ns_ip(&ns_a, &["addr", "add", "169.254.169.254/32", "dev", "tap2"]);
            sh(ua, "ip route replace 169.254.169.254 dev eth2");
            let got = guest_http(
                ua,
                &["GET /latest/meta-data HTTP/1.1", "Host: 169.254.169.254"],
            );
            let before = a.counters("eth2");
            // A tenant rule denying it is what judges the next one (MMDS does not bypass it).
            let r = a.vm.client().patch(
                "/network-interfaces/eth2",
                json!({"iface_id": "eth2", "firewall": {
                    "allowed_ips": ["10.0.2.2/32"], "default_ingress": "allow",
                    "egress": [{"action": "deny", "proto": "tcp", "ports": "80",
                                "cidr": "169.254.169.254/32"}]}}),
            );
            let denied = guest_nc_stdout(ua, MMDS_IP);
            let after = a.counters("eth2");
            // Back to what a guest_mac without a firewall object means (the relay check
            // below forwards through eth2).
            let restored = a.vm.client().patch(
                "/network-interfaces/eth2",
                json!({"iface_id": "eth2", "firewall": {
                    "allowed_ips": ["0.0.0.0/0", "::/0"], "default_ingress": "allow"}}),
            );
            sh(ua, "ip route replace 169.254.169.254 dev eth0");
            ns_ip(&ns_a, &["addr", "del", "169.254.169.254/32", "dev", "tap2"]);
            println!("eth2 before the rule {before:?}\neth2 after {after:?}");
            assert_eq!(got, HOST_BANNER, "not the tap's host");
            assert_eq!(counter(&before, "mmds_frames_in"), 0, "{before:?}");
            assert!(counter(&before, "tx_packets_count") > 0, "{before:?}");
            assert_eq!(r.status, 204, "{}", r.body);
            assert_eq!(denied, "", "the tenant's deny rule let it through");
            assert!(
                counter(&after, "fw_rule_deny") > counter(&before, "fw_rule_deny"),
                "{before:?} -> {after:?}"
            );
            assert_eq!(counter(&after, "mmds_frames_in"), 0, "{after:?}");
            assert_eq!(restored.status, 204, "{}", restored.body);
        },
    );

    checks.run("ping_to_the_mmds_address_is_dropped_and_counted", || {
        let before = a.counters("eth0");
        let ping = exec(ua, &["busybox", "ping", "-c", "1", "-W", "2", MMDS_IP]).unwrap();
        let after = a.counters("eth0");
        assert_ne!(ping.code, 0, "{ping:?}");
        assert!(
            counter(&after, "mmds_other_drops") > counter(&before, "mmds_other_drops"),
            "{before:?} -> {after:?}"
        );
        assert!(counter(&after, "mmds_frames_out") >= 6, "{after:?}");
    });

    checks.run(
        "request_relayed_by_the_guest_from_a_namespace_behind_it_gets_no_answer_ttl_1_dies_in_its_forwarding",
        || {
            // Guest A routes between eth2 and eth0 (and answers ARP on eth0 for the hosts
            // behind eth2, so the MMDS stack can address them); the namespace's route to the
            // MMDS address goes through the guest's eth2.
            sh(
                ua,
                "echo 1 >/proc/sys/net/ipv4/ip_forward && \
                 echo 1 >/proc/sys/net/ipv4/conf/eth0/proxy_arp && \
                 echo 0 >/proc/sys/net/ipv4/neigh/eth0/proxy_delay",
            );
            ns_ip(
                &ns_a,
                &["route", "add", "169.254.169.254/32", "via", "10.0.2.2", "dev", "tap2"],
            );
            let before = guest_snmp(ua);
            let mmds_before = a.counters("eth0");
            let relayed = ns_a
                .run(|| {
                    let to = SocketAddr::from((Ipv4Addr::new(169, 254, 169, 254), 80));
                    TcpStream::connect_timeout(&to, Duration::from_secs(6)).map(|_| ())
                })
                .join()
                .unwrap();
            let after = guest_snmp(ua);
            let mmds_after = a.counters("eth0");
            // The guest's own request still works.
            let token = guest_token(ua, 60);
            let own = guest_get(ua, "/latest/meta-data/instance-id", Some(&token));
            ns_ip(&ns_a, &["route", "del", "169.254.169.254/32"]);
            let delta =
                |k: &str| after.get(k).unwrap_or(&0).saturating_sub(*before.get(k).unwrap_or(&0));
            println!(
                "relay: {relayed:?}; guest Ip.ForwDatagrams +{} Ip.InHdrErrors +{} \
                 Icmp.OutTimeExcds +{}; eth0 mmds_frames_in +{} mmds_frames_out +{}",
                delta("Ip.ForwDatagrams"),
                delta("Ip.InHdrErrors"),
                delta("Icmp.OutTimeExcds"),
                counter(&mmds_after, "mmds_frames_in") - counter(&mmds_before, "mmds_frames_in"),
                counter(&mmds_after, "mmds_frames_out")
                    - counter(&mmds_before, "mmds_frames_out"),
            );
            match relayed {
                Err(e) if e.kind() == ErrorKind::TimedOut => {}
                other => panic!("the relayed connect should time out: {other:?}"),
            }
            assert!(delta("Ip.ForwDatagrams") >= 1, "the guest relayed nothing");
            assert!(
                delta("Ip.InHdrErrors") >= 1,
                "no answer died of its TTL in the guest's forwarding"
            );
            assert_eq!(status_of(&own), 200, "{own}");
        },
    );

    checks.run(
        "token_from_another_vm_is_401_there_and_200_in_its_own",
        || {
            let a_token = guest_token(ua, 60);
            let in_b = guest_get(b.uds(), "/latest/meta-data", Some(&a_token));
            let b_token = guest_token(b.uds(), 60);
            let b_own = guest_get(b.uds(), "/latest/meta-data", Some(&b_token));
            let a_own = guest_get(ua, "/latest/meta-data", Some(&a_token));
            assert_eq!(status_of(&in_b), 401, "A's token in B: {in_b}");
            assert_eq!(body_of(&in_b), "MMDS token not valid.");
            assert_eq!(status_of(&b_own), 200, "B's token in B: {b_own}");
            assert_eq!(status_of(&a_own), 200, "A's token in A: {a_own}");
        },
    );

    let run_a = a.vm.running.kill();
    let run_b = b.vm.running.kill();
    println!(
        "VMMs ran {:.1} s and {:.1} s",
        run_a.elapsed.as_secs_f64(),
        run_b.elapsed.as_secs_f64()
    );
    checks.finish();
}

#[test]
fn v1_guest_reads_the_imds_listing_without_a_token() {
    let test = "v1_guest_reads_the_imds_listing_without_a_token";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let _slots = GUEST_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Guest::start(
        &ns,
        "palisade.ip=10.0.0.2/24 palisade.gw=10.0.0.1",
        &[json!({"iface_id": "eth0", "host_dev_name": "tap0",
                 "guest_mac": "06:00:0a:00:00:02"})],
        json!({"version": "V1", "network_interfaces": ["eth0"], "imds_compat": true}),
    );
    c.wait_ready();
    let mut checks = Checks::default();
    let uc = c.uds().to_path_buf();
    let uc = uc.as_path();
    checks.run(
        "v1_get_without_a_token_is_200_in_the_imds_text_form",
        || {
            // Accept: application/json, yet imds_compat answers in text.
            let listing = guest_get(uc, "/latest/meta-data", None);
            assert_eq!(status_of(&listing), 200, "{listing}");
            assert!(listing.contains("Content-Type: text/plain"), "{listing}");
            assert_eq!(body_of(&listing), "instance-id\nzone");
            let id = guest_get(uc, "/latest/meta-data/instance-id", None);
            assert_eq!(status_of(&id), 200, "{id}");
            assert_eq!(body_of(&id), "i-palisade");
            // Tokens are still issued (a V2 client works against V1).
            guest_token(uc, 60);
        },
    );
    checks.run("v1_logs_a_warning", || {
        c.vm.running
            .wait_for_log("MMDS V1 configured", Duration::from_secs(10));
    });
    let run = c.vm.running.kill();
    println!("VMM ran {:.1} s", run.elapsed.as_secs_f64());
    checks.finish();
}
