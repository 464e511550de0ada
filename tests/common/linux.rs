//! A booted Linux test guest kept as a snapshot ("golden"), and clones restored from it.
//!
//! Booting the Linux guest costs ~13 s of emulated kernel work on hosts without VMX/SVM;
//! restoring a snapshot of it costs milliseconds. Tests that are not about booting restore
//! the golden snapshot instead: it is booted once per VMM binary and guest build, by the
//! first test binary that asks, and kept in `CARGO_TARGET_TMPDIR` behind a file lock (test
//! binaries and the tests inside one binary share it; a rebuilt `palisade` or another
//! guest build makes a new one).
//!
//! The golden guest: 1 vCPU, 128 MiB, the initramfs (init gives the serial console a shell
//! and starts the agent), entropy, vsock (CID 3), drive `data` (1 MiB of zeros, read-write,
//! /dev/vda in the guest), drive `ro` (1 MiB of 0x5a, read-only, /dev/vdb) and drive
//! `rootfs` (the guest build's ext4 image, read-only, /dev/vdc; not mounted). It was paused
//! once the agent answered and after `/tmp/golden` was written. No network interface
//! (the Linux network tests boot their own guest in their own namespaces).

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;

use super::agent::{exec, sh, wait_for_agent};
use super::{linux_guest_dir, palisade_bin, ApiVm};

/// Bumped whenever the golden guest's configuration changes (old snapshots are removed).
const GOLDEN_VERSION: u32 = 4;
/// Booting on a loaded host without VMX/SVM: generous.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// The contents of `/tmp/golden` in every clone.
pub const GOLDEN_MARK: &str = "written-before-the-snapshot";
/// Size of each golden drive.
pub const DRIVE_BYTES: usize = 1 << 20;

/// The golden snapshot's files.
#[derive(Debug)]
pub struct Golden {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub mem: PathBuf,
    /// The `data` drive's file as the golden guest had it (clones should PATCH their own
    /// copy in before writing to /dev/vda).
    pub data: PathBuf,
    /// How long the boot to a working agent took, if this process booted it.
    pub boot: Option<Duration>,
}

/// The Linux guest's `boot-source` with `extra` boot arguments.
pub fn boot_source(extra: &str) -> serde_json::Value {
    let dir = linux_guest_dir();
    let boot_args = std::fs::read_to_string(dir.join("boot_args")).expect("boot_args");
    json!({
        "kernel_image_path": dir.join("vmlinux"),
        "initrd_path": dir.join("initramfs.cpio"),
        "boot_args": format!("{} {extra}", boot_args.trim()).trim_end(),
    })
}

/// Which VMM binary and guest build a golden snapshot belongs to.
fn cache_key() -> u64 {
    let meta = std::fs::metadata(palisade_bin()).expect("palisade binary");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    GOLDEN_VERSION.hash(&mut h);
    meta.len().hash(&mut h);
    meta.modified().expect("mtime").hash(&mut h);
    linux_guest_dir().hash(&mut h);
    h.finish()
}

/// The golden snapshot, booted and saved by the first caller on this machine for this VMM
/// binary and guest build.
pub fn golden() -> &'static Golden {
    static GOLDEN: OnceLock<Golden> = OnceLock::new();
    GOLDEN.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&root).unwrap();
        let name = format!("lg-{:016x}", cache_key());
        let dir = root.join(&name);
        // Held until the snapshot is complete: other test binaries wait here.
        let lock = File::create(root.join("linux-golden.lock")).unwrap();
        lock.lock().unwrap();
        let mut boot = None;
        if !dir.join("complete").exists() {
            for entry in std::fs::read_dir(&root).unwrap().flatten() {
                let old = entry.file_name().to_string_lossy().into_owned();
                if old.starts_with("lg-") {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
            std::fs::create_dir_all(&dir).unwrap();
            boot = Some(boot_and_save(&dir));
            std::fs::write(dir.join("complete"), b"").unwrap();
        }
        lock.unlock().unwrap();
        Golden {
            state: dir.join("state"),
            mem: dir.join("mem"),
            data: dir.join("data.img"),
            dir,
            boot,
        }
    })
}

/// The golden snapshot's key file in `dir` (written once, 0600): the snapshot names the
/// guest's root file system outside any snapshot directory, which only a keyed state file
/// may do.
fn golden_key(dir: &Path) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("key");
    if !path.exists() {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"golden-snapshot-key-0123456789ab").unwrap();
    }
    path.to_string_lossy().into_owned()
}

/// Boots the golden guest in `dir`, waits for its agent, marks /tmp/golden, pauses and
/// creates a Full snapshot there; returns the time from InstanceStart to a working agent.
fn boot_and_save(dir: &Path) -> Duration {
    let data = dir.join("data.img");
    let ro = dir.join("ro.img");
    std::fs::write(&data, vec![0u8; DRIVE_BYTES]).unwrap();
    std::fs::write(&ro, vec![0x5au8; DRIVE_BYTES]).unwrap();
    let api_dir = tempfile::tempdir().unwrap();
    // Short (uds_path has at most 96 bytes, the target directory may be deep); clones move
    // it with vsock_override anyway.
    let uds = api_dir.path().join("v.sock");
    let snapshot_dir = dir.to_string_lossy().into_owned();
    let key = golden_key(dir);
    let vm = ApiVm::start_in(
        api_dir,
        &["--snapshot-dir", &snapshot_dir, "--snapshot-key-file", &key],
    );
    let mut c = vm.client();
    for (path, body) in [
        (
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 128}),
        ),
        ("/boot-source", boot_source("")),
        (
            "/drives/data",
            json!({"drive_id": "data", "path_on_host": data, "is_root_device": false,
                   "is_read_only": false, "cache_type": "Writeback"}),
        ),
        (
            "/drives/ro",
            json!({"drive_id": "ro", "path_on_host": ro, "is_root_device": false,
                   "is_read_only": true}),
        ),
        (
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "is_root_device": false, "is_read_only": true,
                   "path_on_host": linux_guest_dir().join("rootfs.ext4")}),
        ),
        ("/entropy", json!({})),
        ("/vsock", json!({"guest_cid": 3, "uds_path": uds})),
    ] {
        let r = c.put(path, body);
        assert_eq!(r.status, 204, "PUT {path}: {}", r.body);
    }
    let started = Instant::now();
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let mut running = vm.running;
    running.wait_for_output("palisade-agent: listening", BOOT_TIMEOUT);
    wait_for_agent(&uds, BOOT_TIMEOUT);
    let boot = started.elapsed();
    sh(&uds, &format!("echo {GOLDEN_MARK} >/tmp/golden"));
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": dir.join("state"),
               "mem_file_path": dir.join("mem")}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, running.stderr());
    running.kill();
    println!("golden Linux snapshot: agent answered {boot:?} after InstanceStart");
    boot
}

/// A VMM process restored from the golden snapshot, with its own vsock socket.
pub struct LinuxClone {
    pub vm: ApiVm,
    /// The clone's vsock `uds_path` (the agent is behind it).
    pub uds: PathBuf,
    /// How long `PUT /snapshot/load` took (wall).
    pub load: Duration,
}

impl LinuxClone {
    /// Loads the golden snapshot into a new VMM process (`resume_vm` as given), the vsock
    /// socket moved into the clone's own directory (`vsock_override`).
    pub fn start(resume_vm: bool) -> Self {
        let golden = golden();
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().to_string_lossy().into_owned();
        let shared = golden.dir.to_string_lossy().into_owned();
        let uds = dir.path().join("v.sock");
        let key = golden_key(&golden.dir);
        let vm = ApiVm::start_in(
            dir,
            &[
                "--snapshot-dir",
                &own,
                "--snapshot-dir",
                &shared,
                "--snapshot-key-file",
                &key,
            ],
        );
        let mut c = vm.client();
        let started = Instant::now();
        let r = c.put(
            "/snapshot/load",
            json!({"snapshot_path": golden.state,
                   "mem_backend": {"backend_type": "File", "backend_path": golden.mem},
                   "resume_vm": resume_vm,
                   "vsock_override": {"uds_path": uds}}),
        );
        let load = started.elapsed();
        assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
        Self { vm, uds, load }
    }

    /// Gives the clone its own copy of the golden `data` drive (a file in its directory);
    /// returns the copy's path.
    pub fn own_data_drive(&self) -> PathBuf {
        let copy = self.vm.dir.path().join("data.img");
        std::fs::copy(&golden().data, &copy).unwrap();
        let r = self.vm.client().patch(
            "/drives/data",
            json!({"drive_id": "data", "path_on_host": copy}),
        );
        assert_eq!(r.status, 204, "{}", r.body);
        copy
    }

    /// Resumes a clone loaded with `resume_vm: false`.
    pub fn resume(&self) {
        let r = self.vm.client().patch("/vm", json!({"state": "Resumed"}));
        assert_eq!(r.status, 204, "{}", r.body);
    }

    /// `sh -c script` in the clone through its agent; its stdout (exit 0 asserted).
    pub fn sh(&self, script: &str) -> String {
        match exec(&self.uds, &["sh", "-c", script]) {
            Ok(out) if out.code == 0 => out.stdout,
            other => panic!(
                "EXEC {script}: {other:?}\n--- serial\n{}\n--- VMM log\n{}",
                self.vm.running.stdout(),
                self.vm.running.stderr()
            ),
        }
    }
}
