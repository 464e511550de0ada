//! A snapshot loaded with the Uffd memory backend by a VMM inside palisade-jailer: the jailed
//! VMM (no privilege for the userfaultfd system call) gets its userfaultfd from the jail's
//! /dev/userfaultfd, connects to the handler's socket inside its jail, and its guest reads
//! back a pattern over all of its RAM, every page served by the handler on the host.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::api::{api_request, wait_for_socket};
use common::{can_jail, probe_guest, uffd_handler_bin, unique, vmm_bin, Sandbox};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Collects the lines `source` prints.
fn collect(source: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines() {
            let Ok(line) = line else { break };
            let mut out = sink.lock().unwrap();
            out.push_str(&line);
            out.push('\n');
        }
    });
    out
}

/// Waits until `out` holds `text`.
fn wait_for(out: &Arc<Mutex<String>>, text: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !out.lock().unwrap().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?}:\n{}",
            out.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A jailed VMM serving its API at <root>/run/api.sock; its stdout and stderr collected.
struct Jailed {
    child: Child,
    root: PathBuf,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Jailed {
    fn start(sandbox: &Sandbox, vmm: &Path, id: &str, extra: &[&str]) -> Self {
        let mut cmd = sandbox.jailer(id, vmm);
        cmd.args(["--new-pid-ns", "--cgroup", "pids.max=64"]);
        cmd.args(["--", "--api-sock", "/run/api.sock"]);
        cmd.args(extra);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let root = sandbox.root(vmm, id);
        wait_for_socket(&root.join("run/api.sock"), TIMEOUT);
        Self {
            child,
            root,
            stdout,
            stderr,
        }
    }

    fn put(&self, path: &str, body: serde_json::Value) {
        let sock = self.root.join("run/api.sock");
        let (status, answer) = api_request(&sock, "PUT", path, &body.to_string());
        assert_eq!(
            status,
            204,
            "PUT {path}: {answer}\n{}",
            self.stderr.lock().unwrap()
        );
    }
}

impl Drop for Jailed {
    fn drop(&mut self) {
        // The VMM dies with its supervisor (PR_SET_PDEATHSIG).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_jailed_vmm_loads_a_snapshot_with_uffd_through_the_jails_dev_userfaultfd() {
    let test = "a_jailed_vmm_loads_a_snapshot_with_uffd_through_the_jails_dev_userfaultfd";
    if !can_jail(test) {
        return;
    }
    if !Path::new("/sys/class/misc/userfaultfd/dev").exists() {
        common::skip::skip(test, "the host kernel has no /dev/userfaultfd");
        return;
    }
    let vmm = vmm_bin();
    let sandbox = Sandbox::new("uffd");

    // Jail A: boot the probe, let it recheck its pattern twice, pause, snapshot into /snap.
    let id_a = unique("uffd-a");
    let root_a = sandbox.stage_libraries(&vmm, &id_a);
    std::fs::copy(probe_guest(), root_a.join("probe.elf")).unwrap();
    let snap = root_a.join("snap");
    std::fs::create_dir(&snap).unwrap();
    std::os::unix::fs::chown(&snap, Some(sandbox.uid), Some(sandbox.uid)).unwrap();
    let a = Jailed::start(&sandbox, &vmm, &id_a, &["--snapshot-dir", "/snap"]);
    a.put(
        "/machine-config",
        serde_json::json!({"vcpu_count": 1, "mem_size_mib": 32}),
    );
    a.put(
        "/boot-source",
        serde_json::json!({"kernel_image_path": "/probe.elf",
            "boot_args": "console=ttyS0 probe.run=pattern probe.seed=99 probe.recheck=1"}),
    );
    a.put(
        "/actions",
        serde_json::json!({"action_type": "InstanceStart"}),
    );
    wait_for(&a.stdout, "probe: pattern recheck 2 ok\n");
    let sock_a = root_a.join("run/api.sock");
    let (status, answer) = api_request(&sock_a, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(status, 204, "{answer}");
    a.put(
        "/snapshot/create",
        serde_json::json!({"snapshot_path": "/snap/state", "mem_file_path": "/snap/mem"}),
    );
    let before = a.stdout.lock().unwrap().clone();
    let pass = before
        .lines()
        .filter_map(|l| {
            l.strip_prefix("probe: pattern recheck ")?
                .strip_suffix(" ok")
        })
        .filter_map(|n| n.parse::<u64>().ok())
        .max()
        .unwrap();
    drop(a);

    // Jail B: the state file staged in it, the handler's socket too (the jailed uid may
    // connect), the memory file served from jail A's directory by the handler on the host.
    let id_b = unique("uffd-b");
    let root_b = sandbox.stage_libraries(&vmm, &id_b);
    std::fs::copy(snap.join("state"), root_b.join("state")).unwrap();
    std::fs::set_permissions(root_b.join("state"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let socket = root_b.join("uffd.sock");
    let mut handler = Command::new(uffd_handler_bin())
        .arg("--socket")
        .arg(&socket)
        .arg("--mem-file")
        .arg(snap.join("mem"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let handler_out = collect(handler.stdout.take().unwrap());
    wait_for(&handler_out, "listening on");
    std::os::unix::fs::chown(&socket, Some(sandbox.uid), Some(sandbox.uid)).unwrap();

    let b = Jailed::start(&sandbox, &vmm, &id_b, &[]);
    b.put(
        "/snapshot/load",
        serde_json::json!({"snapshot_path": "/state",
            "mem_backend": {"backend_type": "Uffd", "backend_path": "/uffd.sock"},
            "resume_vm": true}),
    );
    wait_for(
        &b.stdout,
        &format!("probe: pattern recheck {} ok\n", pass + 2),
    );
    assert!(!b.stdout.lock().unwrap().contains(" fail"));
    // The jailed uid may not use the system call (vm.unprivileged_userfaultfd aside): the
    // userfaultfd came from the jail's device node.
    let log = b.stderr.lock().unwrap().clone();
    assert!(log.contains("userfaultfd from /dev/userfaultfd"), "{log}");
    drop(b);
    let deadline = Instant::now() + TIMEOUT;
    while handler.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the handler did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for(&handler_out, "served ");
    let out = handler_out.lock().unwrap().clone();
    let served: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("uffd-handler: served "))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap();
    assert!(served >= (28 << 20) / 4096, "{out}");
}
