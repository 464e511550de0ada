//! Snapshots under palisade-jailer: a jailed VMM (chroot, its uid, the jailer's Landlock and
//! seccomp layers, then its own) pauses the probe guest and creates a snapshot in a directory
//! of its jail (`--snapshot-dir`, which its own Landlock layer allows; another directory is
//! refused); the files are
//! hard-linked into a second jail, whose VMM loads them with `resume_vm` and the guest goes
//! on where it stopped.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::api::{api_request, wait_for_socket};
use common::{can_jail, probe_guest, unique, vmm_bin, Sandbox};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A jailed VMM serving the API at `<root>/run/api.sock`, its output collected.
struct Jailed {
    child: Child,
    root: PathBuf,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Drop for Jailed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(mut source: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = source.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    text
}

impl Jailed {
    /// Stages the VMM's libraries and an empty `/snap` owned by the jail's uid, then starts
    /// the jailer with `--api-sock /run/api.sock --snapshot-dir /snap`. `stage(root)` adds
    /// files first.
    fn start(sandbox: &Sandbox, name: &str, stage: &dyn Fn(&Path)) -> Self {
        let vmm = vmm_bin();
        let id = unique(name);
        let root = sandbox.stage_libraries(&vmm, &id);
        let snap = root.join("snap");
        std::fs::create_dir_all(&snap).unwrap();
        std::os::unix::fs::chown(&snap, Some(sandbox.uid), Some(sandbox.uid)).unwrap();
        std::fs::set_permissions(&snap, std::fs::Permissions::from_mode(0o700)).unwrap();
        stage(&root);
        let mut cmd = sandbox.jailer(&id, &vmm);
        cmd.args(["--new-pid-ns", "--cgroup", "pids.max=64"]);
        cmd.args([
            "--",
            "--api-sock",
            "/run/api.sock",
            "--snapshot-dir",
            "/snap",
        ]);
        let mut child = common::spawn(cmd);
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        let jailed = Self {
            child,
            root,
            out,
            err,
        };
        wait_for_socket(&jailed.sock(), TIMEOUT);
        jailed
    }

    fn sock(&self) -> PathBuf {
        self.root.join("run/api.sock")
    }

    /// `METHOD path body`, which must answer 204.
    fn ok(&self, method: &str, path: &str, body: serde_json::Value) {
        let (status, answer) = api_request(&self.sock(), method, path, &body.to_string());
        assert_eq!(
            status,
            204,
            "{method} {path}: {answer}\n--- VMM log\n{}",
            self.err.lock().unwrap()
        );
    }

    /// Waits until the guest printed `text`.
    fn wait_for_output(&mut self, text: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.out.lock().unwrap().contains(text) {
            let exited = self.child.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "no {text:?} ({exited:?})\n--- stdout\n{}\n--- stderr\n{}",
                    self.out.lock().unwrap(),
                    self.err.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The last complete `probe: tick N` line.
fn last_tick(out: &str) -> u64 {
    out.split_inclusive('\n')
        .rev()
        .filter_map(|l| l.strip_suffix('\n')?.strip_prefix("probe: tick "))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_snapshot_created_in_one_jail_loads_in_another_and_the_guest_continues() {
    if !can_jail("a_snapshot_created_in_one_jail_loads_in_another_and_the_guest_continues") {
        return;
    }
    let sandbox = Sandbox::new("snap");
    let mut first = Jailed::start(&sandbox, "snap-create", &|root| {
        std::fs::copy(probe_guest(), root.join("probe.elf")).unwrap();
        let other = root.join("other");
        std::fs::create_dir(&other).unwrap();
        std::os::unix::fs::chown(&other, Some(sandbox.uid), Some(sandbox.uid)).unwrap();
    });
    first.ok(
        "PUT",
        "/machine-config",
        serde_json::json!({"vcpu_count": 1, "mem_size_mib": 32}),
    );
    first.ok(
        "PUT",
        "/boot-source",
        serde_json::json!({"kernel_image_path": "/probe.elf",
                           "boot_args": "console=ttyS0 probe.run=ticker"}),
    );
    first.ok(
        "PUT",
        "/actions",
        serde_json::json!({"action_type": "InstanceStart"}),
    );
    first.wait_for_output("probe: tick 2\n");
    first.ok("PATCH", "/vm", serde_json::json!({"state": "Paused"}));
    // The VMM's own Landlock layer writes snapshots only into `--snapshot-dir`: another
    // directory of the jail, writable by its uid, is refused.
    let (status, answer) = api_request(
        &first.sock(),
        "PUT",
        "/snapshot/create",
        &serde_json::json!({"snapshot_type": "Full", "snapshot_path": "/other/state",
                            "mem_file_path": "/other/mem"})
        .to_string(),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("ermission denied"), "{answer}");
    assert_eq!(
        std::fs::read_dir(first.root.join("other")).unwrap().count(),
        0
    );
    first.ok(
        "PUT",
        "/snapshot/create",
        serde_json::json!({"snapshot_type": "Full", "snapshot_path": "/snap/state",
                           "mem_file_path": "/snap/mem"}),
    );
    let stopped_at = last_tick(&first.out.lock().unwrap());
    assert!(stopped_at >= 2);
    let created = first.root.join("snap");
    let mem = std::fs::metadata(created.join("mem")).unwrap();
    assert_eq!(mem.len(), 32 << 20);
    assert_eq!(mem.permissions().mode() & 0o777, 0o600);
    let log = first.err.lock().unwrap().clone();
    assert!(log.contains("VMM Landlock ABI"), "{log}");
    drop(first);

    // The second jail gets the files as hard links (same file system), nothing else: no
    // kernel, no config.
    let mut second = Jailed::start(&sandbox, "snap-load", &|root| {
        for name in ["state", "mem"] {
            std::fs::hard_link(created.join(name), root.join("snap").join(name)).unwrap();
        }
    });
    second.ok(
        "PUT",
        "/snapshot/load",
        serde_json::json!({"snapshot_path": "/snap/state",
                           "mem_backend": {"backend_type": "File", "backend_path": "/snap/mem"},
                           "resume_vm": true}),
    );
    second.wait_for_output(&format!("probe: tick {}\n", stopped_at + 2));
    let out = second.out.lock().unwrap().clone();
    assert!(!out.contains("ticker ok"), "the guest booted again:\n{out}");
    let log = second.err.lock().unwrap().clone();
    assert!(log.contains("Snapshot loaded"), "{log}");
    assert!(log.contains("VMM Landlock ABI"), "{log}");
}
