//! The Firecracker-compatible API on its Unix socket, driven like an orchestrator would,
//! with the real binary and the real probe guest.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::api::ApiClient;
use common::{kvm_available, probe_path, ApiVm};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

fn configure_probe(client: &mut ApiClient, scenarios: &str, vcpus: u8) {
    let r = client.put(
        "/machine-config",
        json!({"vcpu_count": vcpus, "mem_size_mib": 64}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = client.put(
        "/boot-source",
        json!({"kernel_image_path": probe_path(),
               "boot_args": format!("console=ttyS0 probe.run={scenarios}")}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
}

fn start(client: &mut ApiClient) {
    let r = client.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
}

#[test]
fn a_whole_boot_through_the_socket_is_audited() {
    if !kvm_available("a_whole_boot_through_the_socket_is_audited") {
        return;
    }
    let vm = ApiVm::start(&[]);
    let mut c = vm.client();
    let info = c.get("/");
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["state"], "Not started");
    assert_eq!(info.json()["app_name"], "Palisade");
    assert_eq!(c.get("/version").status, 200);
    configure_probe(&mut c, "hello", 2);
    let cfg = c.get("/machine-config").json();
    assert_eq!(cfg["vcpu_count"], 2);
    start(&mut c);
    let run = vm.running.wait(TIMEOUT);
    run.assert_success();
    run.assert_probe_ok("hello");
    assert!(run.stderr.contains("Guest-boot-time"), "{}", run.stderr);

    let audit: Vec<serde_json::Value> = std::fs::read_to_string(vm.dir.path().join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let requests: Vec<_> = audit.iter().filter(|r| r["event"] == "request").collect();
    assert_eq!(requests.len(), 6, "{audit:#?}");
    let start = requests.last().unwrap();
    assert_eq!(start["method"], "PUT");
    assert_eq!(start["path"], "/actions");
    assert_eq!(start["status"], 204);
    assert_eq!(start["peer_uid"], unsafe_geteuid());
    assert_eq!(start["peer_pid"], std::process::id());
    assert!(start["duration_us"].as_u64().is_some());
    assert!(start["time"].as_str().unwrap().ends_with('Z'));
    let raw = std::fs::read_to_string(vm.dir.path().join("audit.jsonl")).unwrap();
    assert!(
        !raw.contains("kernel_image_path"),
        "a body leaked into the audit log"
    );
}

fn unsafe_geteuid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid()
        })
        .unwrap()
}

#[test]
fn pre_boot_and_post_boot_rules_follow_firecracker() {
    if !kvm_available("pre_boot_and_post_boot_rules_follow_firecracker") {
        return;
    }
    let mut vm = ApiVm::start(&[]);
    let mut c = vm.client();
    let pre = "The requested operation is not supported before starting the microVM.";
    let post = "The requested operation is not supported after starting the microVM.";
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!((r.status, r.fault()), (400, pre.to_string()));
    let r = c.put("/actions", json!({"action_type": "SendCtrlAltDel"}));
    assert_eq!((r.status, r.fault()), (400, pre.to_string()));
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 400);
    assert_eq!(
        r.fault(),
        "Cannot start microvm without kernel configuration."
    );
    let r = c.put(
        "/machine-config",
        json!({"vcpu_count": 0, "mem_size_mib": 64}),
    );
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("vcpu_count"), "{}", r.body);
    let r = c.patch("/machine-config", json!({"mem_size_mib": 96}));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(c.get("/machine-config").json()["mem_size_mib"], 96);

    configure_probe(&mut c, "idle", 1);
    start(&mut c);
    vm.running.wait_for_output("probe: idle ok", TIMEOUT);
    assert_eq!(c.get("/").json()["state"], "Running");
    for (method, path, body) in [
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 64}),
        ),
        ("PATCH", "/machine-config", json!({"vcpu_count": 2})),
        ("PUT", "/boot-source", json!({"kernel_image_path": "/k"})),
        ("PUT", "/actions", json!({"action_type": "InstanceStart"})),
    ] {
        let r = c.request(method, path, Some(&body.to_string()));
        assert_eq!(
            (r.status, r.fault()),
            (400, post.to_string()),
            "{method} {path}"
        );
    }
    let full = c.get("/vm/config").json();
    assert_eq!(full["machine-config"]["vcpu_count"], 1);
    assert!(full["boot-source"]["kernel_image_path"].is_string());
    let r = c.put(
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "path_on_host": "/r",
                                           "is_root_device": true, "is_read_only": false}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.fault(),
        "The requested operation is not supported after starting the microVM.",
        "{}",
        r.body
    );
    vm.running.kill();
}

#[test]
fn pause_really_stops_the_guest_and_resume_restarts_it() {
    if !kvm_available("pause_really_stops_the_guest_and_resume_restarts_it") {
        return;
    }
    let mut vm = ApiVm::start(&[]);
    let mut c = vm.client();
    configure_probe(&mut c, "ticker", 2);
    start(&mut c);
    vm.running.wait_for_output("probe: tick 3\n", TIMEOUT);
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(c.get("/").json()["state"], "Paused");
    let frozen = vm.running.stdout();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        vm.running.stdout(),
        frozen,
        "the guest made progress while paused"
    );
    let r = c.patch("/vm", json!({"state": "Resumed"}));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(c.get("/").json()["state"], "Running");
    let ticks = frozen.matches("probe: tick").count();
    vm.running
        .wait_for_output(&format!("probe: tick {}\n", ticks + 2), TIMEOUT);
    vm.running.kill();
}

#[test]
fn ctrl_alt_del_reaches_the_guest_keyboard() {
    if !kvm_available("ctrl_alt_del_reaches_the_guest_keyboard") {
        return;
    }
    let mut vm = ApiVm::start(&[]);
    let mut c = vm.client();
    configure_probe(&mut c, "kbd", 1);
    start(&mut c);
    vm.running.wait_for_output("probe: kbd waiting", TIMEOUT);
    let r = c.put("/actions", json!({"action_type": "SendCtrlAltDel"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let run = vm.running.wait(TIMEOUT);
    run.assert_success();
    assert_eq!(
        run.assert_probe_ok("kbd"),
        "scancodes=0x1d,0xe0,0x38,0xe0,0x53,0x9d,0xe0,0xb8,0xe0,0xd3"
    );
}

#[test]
fn bad_requests_get_a_clear_4xx_and_the_vmm_keeps_serving() {
    let vm = ApiVm::start(&["--http-api-max-payload-size", "100"]);
    let mut c = vm.client();
    let cases: Vec<(&str, &str, Option<String>, &str)> = vec![
        (
            "GET",
            "/nope",
            None,
            "Invalid request method and/or path: GET /nope.",
        ),
        (
            "DELETE",
            "/machine-config",
            None,
            "Invalid request method and/or path",
        ),
        (
            "GET",
            "/",
            Some("{}".into()),
            "GET request cannot have a body.",
        ),
        ("PUT", "/actions", None, "Empty PUT request."),
        (
            "PUT",
            "/actions",
            Some("{not json".into()),
            "key must be a string",
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type":"Reboot"}"#.into()),
            "unknown variant",
        ),
        (
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path":"/k","x":1}"#.into()),
            "unknown field `x`",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":1}"#.into()),
            "missing field `mem_size_mib`",
        ),
        (
            "PATCH",
            "/vm",
            Some(r#"{"state":"Sleeping"}"#.into()),
            "unknown variant",
        ),
    ];
    for (method, path, body, needle) in cases {
        let r = c.request(method, path, body.as_deref());
        assert_eq!(r.status, 400, "{method} {path}: {}", r.body);
        assert!(
            r.fault().contains(needle),
            "{method} {path}: {:?} lacks {needle:?}",
            r.fault()
        );
    }
    // A body over the limit: Firecracker's status and message, and the connection closes.
    let mut big = vm.client();
    let r = big.request("PUT", "/boot-source", Some(&"x".repeat(500)));
    assert_eq!(r.status, 400);
    assert_eq!(
        r.fault(),
        "Request payload with size 500 is larger than the limit of 100 allowed by server."
    );
    // Malformed HTTP.
    let mut raw = vm.client();
    raw.send_raw(b"THIS IS NOT HTTP\r\n\r\n");
    let r = raw.read_response();
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("Malformed HTTP request"), "{}", r.body);
    // The first connection still works.
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn silent_and_half_sent_clients_do_not_block_others() {
    let vm = ApiVm::start(&[]);
    let _silent = UnixStream::connect(vm.sock()).unwrap();
    let mut half = UnixStream::connect(vm.sock()).unwrap();
    half.write_all(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"kernel")
        .unwrap();
    let mut c = vm.client();
    for _ in 0..10 {
        assert_eq!(c.get("/machine-config").status, 200);
    }
    // The half request is answered with a timeout once its time is up.
    half.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    let _ = half.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(answer.contains("Request timed out."), "{answer:?}");
}

#[test]
fn a_thousand_sequential_and_eight_concurrent_clients_succeed() {
    let vm = ApiVm::start(&[]);
    let mut c = vm.client();
    for i in 0..1000 {
        let r = c.get("/machine-config");
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    let sock = vm.sock();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut c = ApiClient::connect(sock);
                for i in 0..100 {
                    let r = if i % 2 == 0 {
                        c.get("/")
                    } else {
                        c.patch("/machine-config", json!({"mem_size_mib": 64 + t}))
                    };
                    assert!(r.status == 200 || r.status == 204, "{}", r.body);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let audited = vm.audit().len();
    assert_eq!(audited, 1000 + 800, "every request is audited");
}

#[test]
fn a_caller_with_another_uid_is_refused_and_audited() {
    let vm = ApiVm::start(&[]);
    // Let the other uid reach the socket, so that Palisade's own check is what refuses it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(vm.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(vm.sock(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-s",
            "-i",
        ])
        .arg("--unix-socket")
        .arg(vm.sock())
        .arg("http://localhost/")
        .output()
        .expect("run curl as another uid");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 403"), "{text:?} {out:?}");
    assert!(text.contains("uid 65534 is not allowed"), "{text}");
    let refused: Vec<_> = vm
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "refused")
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["peer_uid"], 65534);
    assert_eq!(refused[0]["status"], 403);
    assert_eq!(refused[0]["path"], "/");
    // The socket is created 0600.
    let vm2 = ApiVm::start(&[]);
    let mode = std::fs::metadata(vm2.sock()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // An allowed-uid list without root refuses root too.
    let vm3 = ApiVm::start(&["--api-allowed-uid", "4242"]);
    let mut c = vm3.client();
    let r = c.get("/");
    assert_eq!(r.status, 403);
    assert!(r.fault().contains("uid 0 is not allowed"), "{}", r.body);
}

#[test]
fn metrics_and_logs_go_to_their_files_and_flush_on_request() {
    if !kvm_available("metrics_and_logs_go_to_their_files_and_flush_on_request") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let metrics = out.path().join("metrics.jsonl");
    let log = out.path().join("vmm.log");
    let mut vm = ApiVm::start(&[
        "--metrics-path",
        metrics.to_str().unwrap(),
        "--log-path",
        log.to_str().unwrap(),
    ]);
    let mut c = vm.client();
    let r = c.put("/actions", json!({"action_type": "FlushMetrics"}));
    assert_eq!(
        r.status, 400,
        "FlushMetrics is not allowed before boot in Firecracker"
    );
    configure_probe(&mut c, "idle", 1);
    start(&mut c);
    vm.running.wait_for_output("probe: idle ok", TIMEOUT);
    let r = c.put("/actions", json!({"action_type": "FlushMetrics"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/metrics", json!({"metrics_path": "/tmp/other"}));
    assert_eq!(r.status, 400, "PUT /metrics is pre-boot only");
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    for group in [
        "api_server",
        "vcpu",
        "uart",
        "i8042",
        "latencies_us",
        "signals",
        "seccomp",
        "palisade",
    ] {
        assert!(last.get(group).is_some(), "no {group} in {last}");
    }
    assert!(
        last["put_api_requests"]["actions_count"].as_u64().unwrap() >= 1,
        "{last}"
    );
    assert!(last["uart"]["write_count"].as_u64().unwrap() > 10, "{last}");
    assert!(last["vcpu"]["exit_io_out"].as_u64().unwrap() > 10, "{last}");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("API server started"), "{log_text}");
    vm.running.kill();
}
