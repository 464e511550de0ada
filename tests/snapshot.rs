//! Snapshots in Firecracker's flow, each VMM a new process: configure, start, pause,
//! `PUT /snapshot/create`, then a NEW palisade process `PUT /snapshot/load` with
//! `resume_vm`. The probe guest proves the clone continues where the guest stopped; state
//! files that are tampered with, keyed with another key or whose memory file was truncated
//! are refused with 400 and leave the VMM fresh and usable; the controller's rules (create
//! only when paused, load only on a fresh VMM) hold through the socket.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::api::ApiClient;
use common::vsock::crc32;
use common::{kvm_available, palisade_bin, probe_path, ApiVm};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
const SECTOR: usize = 512;
const KEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

fn configure_probe(client: &mut ApiClient, boot_args: &str, mib: usize) {
    let r = client.put(
        "/machine-config",
        json!({"vcpu_count": 2, "mem_size_mib": mib}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = client.put(
        "/boot-source",
        json!({"kernel_image_path": probe_path(),
               "boot_args": format!("console=ttyS0 {boot_args}")}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
}

/// Writes `key` to DIR/name (0600) and returns the flag pair for it.
fn key_flag(dir: &Path, name: &str, key: &[u8]) -> Vec<String> {
    let path = dir.join(name);
    std::fs::write(&path, key).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    vec![
        "--snapshot-key-file".into(),
        path.to_string_lossy().into_owned(),
    ]
}

fn args(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// A saved guest: the files, the serial output up to the pause, and the VMM's log.
struct Saved {
    dir: tempfile::TempDir,
    state: PathBuf,
    mem: PathBuf,
    stdout: String,
    log: String,
}

/// Boots the probe with `boot_args`, waits for `marker`, pauses, creates a Full snapshot in
/// a new directory and ends the VMM.
fn boot_and_save(boot_args: &str, mib: usize, marker: &str, key: Option<&[u8]>) -> Saved {
    boot_and_save_with(boot_args, mib, marker, key, &|_, _| {})
}

/// As `boot_and_save`, with `setup(client, dir)` configuring more before InstanceStart.
fn boot_and_save_with(
    boot_args: &str,
    mib: usize,
    marker: &str,
    key: Option<&[u8]>,
    setup: &dyn Fn(&mut ApiClient, &Path),
) -> Saved {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = key
        .map(|k| key_flag(dir.path(), "key", k))
        .unwrap_or_default();
    flags.push("--snapshot-dir".into());
    flags.push(dir.path().to_string_lossy().into_owned());
    let mut vm = ApiVm::start(&args(&flags));
    let mut c = vm.client();
    configure_probe(&mut c, boot_args, mib);
    setup(&mut c, dir.path());
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.wait_for_output(marker, TIMEOUT);
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let (state, mem) = (dir.path().join("state"), dir.path().join("mem"));
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    let stdout = vm.running.stdout();
    let log = vm
        .running
        .wait_for_log("Snapshot created", Duration::from_secs(10));
    vm.running.kill();
    Saved {
        dir,
        state,
        mem,
        stdout,
        log,
    }
}

fn load_body(state: &Path, mem: &Path) -> serde_json::Value {
    json!({"snapshot_path": state,
           "mem_backend": {"backend_type": "File", "backend_path": mem},
           "resume_vm": true})
}

/// The last complete `probe: tick N` line in `out` (a line cut by the pause does not count).
fn last_tick(out: &str) -> u64 {
    out.split_inclusive('\n')
        .rev()
        .filter_map(|l| l.strip_suffix('\n')?.strip_prefix("probe: tick "))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The number in the VMM's log line `prefix ... in N ms`.
fn logged_ms(log: &str, prefix: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(prefix))?;
    let tail = line.rsplit(" in ").next()?;
    tail.trim().strip_suffix(" ms")?.parse().ok()
}

#[test]
fn the_ticker_continues_in_a_new_process_after_create_and_load_with_resume_vm() {
    let test = "the_ticker_continues_in_a_new_process_after_create_and_load_with_resume_vm";
    if !kvm_available(test) {
        return;
    }
    let saved = boot_and_save("probe.run=ticker", 128, "probe: tick 3\n", Some(KEY));
    let stopped_at = last_tick(&saved.stdout);
    assert!(stopped_at >= 3, "{}", saved.stdout);
    let mode = std::fs::metadata(&saved.mem).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "memory file mode {mode:o}");
    assert_eq!(std::fs::metadata(&saved.mem).unwrap().len(), 128 << 20);

    let flags = key_flag(saved.dir.path(), "key2", KEY);
    let mut clone = ApiVm::start(&args(&flags));
    let mut c = clone.client();
    let started = Instant::now();
    let r = c.put("/snapshot/load", load_body(&saved.state, &saved.mem));
    let load_wall = started.elapsed();
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    assert_eq!(c.get("/").json()["state"], "Running");
    // The clone goes on counting from where the guest stopped; it never boots again.
    clone
        .running
        .wait_for_output(&format!("probe: tick {}\n", stopped_at + 2), TIMEOUT);
    let out = clone.running.stdout();
    assert!(!out.contains("ticker ok"), "the clone booted again:\n{out}");
    assert!(
        !out.contains(&format!("probe: tick {stopped_at}\n")),
        "the clone repeated a tick:\n{out}"
    );
    // A loaded VM is a running VM: pause and resume work, a second load is refused.
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/snapshot/load", load_body(&saved.state, &saved.mem));
    assert_eq!(r.status, 400);
    println!(
        "128 MiB probe guest: create {:?} ms (VMM log), load {:?} ms (VMM log), load \
         request {load_wall:?} (wall)",
        logged_ms(&saved.log, "Snapshot created"),
        logged_ms(&clone.running.stderr(), "Snapshot loaded"),
    );
    clone.running.kill();

    // --describe-snapshot prints the header without the key.
    let out = std::process::Command::new(palisade_bin())
        .arg("--describe-snapshot")
        .arg(&saved.state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("format version: 1"), "{text}");
    assert!(text.contains("HMAC-SHA-256"), "{text}");
    assert!(
        text.contains(&format!("memory file size: {} bytes", 128u64 << 20)),
        "{text}"
    );
    let out = std::process::Command::new(palisade_bin())
        .arg("--snapshot-version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v1\n");
}

/// The probe's `mem`/`pattern` value at `addr` for `seed` (resources/probe/src/scenarios/mem.rs).
fn pattern(addr: u64, seed: u64) -> u64 {
    addr.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ 0x5a5a_c3c3_0f0f_9669
        ^ seed.wrapping_mul(0xd6e8_feb8_6659_fd93)
}

#[test]
fn a_pattern_written_to_all_ram_is_in_the_memory_file_and_the_clone_loads_it() {
    let test = "a_pattern_written_to_all_ram_is_in_the_memory_file_and_the_clone_loads_it";
    if !kvm_available(test) {
        return;
    }
    let seed = 4242;
    let saved = boot_and_save(
        &format!("probe.run=pattern probe.seed={seed}"),
        64,
        "probe: pattern ok",
        None,
    );
    let bytes = std::fs::read(&saved.mem).unwrap();
    let (mut words, mut same) = (0u64, 0u64);
    for (i, chunk) in bytes.chunks_exact(8).enumerate().skip((1 << 20) / 8) {
        words += 1;
        let value = u64::from_le_bytes(chunk.try_into().unwrap());
        same += u64::from(value == pattern(i as u64 * 8, seed));
    }
    // All RAM but the probe's own image, stacks and page tables holds the pattern.
    assert!(
        same * 100 >= words * 95,
        "{same} of {words} words hold the pattern"
    );

    let clone = ApiVm::start(&[]);
    let mut c = clone.client();
    let r = c.put("/snapshot/load", load_body(&saved.state, &saved.mem));
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    assert_eq!(c.get("/").json()["state"], "Running");
    // The memory file is mapped private: the clone's pages never reach it.
    drop(c);
    clone.running.kill();
    assert_eq!(std::fs::read(&saved.mem).unwrap(), bytes);
}

#[test]
fn tampered_foreign_and_truncated_snapshots_are_refused_and_the_vmm_stays_usable() {
    let test = "tampered_foreign_and_truncated_snapshots_are_refused_and_the_vmm_stays_usable";
    if !kvm_available(test) {
        return;
    }
    let saved = boot_and_save("probe.run=ticker", 32, "probe: tick 2\n", Some(KEY));
    let dir = saved.dir.path();
    let good = std::fs::read(&saved.state).unwrap();
    let mut tampered = good.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 1;
    let tampered_path = dir.join("tampered");
    std::fs::write(&tampered_path, &tampered).unwrap();
    let short_mem = dir.join("short-mem");
    std::fs::copy(&saved.mem, &short_mem).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&short_mem)
        .unwrap();
    file.set_len((32 << 20) - 4096).unwrap();

    // Another key refuses the genuine file.
    let other = key_flag(dir, "other-key", &[7u8; 32]);
    let foreign = ApiVm::start(&args(&other));
    let mut c = foreign.client();
    let r = c.put("/snapshot/load", load_body(&saved.state, &saved.mem));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("refused"), "{}", r.fault());
    assert_eq!(c.get("/").json()["state"], "Not started");
    foreign.running.kill();

    let flags = key_flag(dir, "key2", KEY);
    let mut vm = ApiVm::start(&args(&flags));
    let mut c = vm.client();
    for (state, mem, what) in [
        (&tampered_path, &saved.mem, "a tampered state file"),
        (&saved.state, &short_mem, "a truncated memory file"),
    ] {
        let r = c.put("/snapshot/load", load_body(state, mem));
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert!(r.fault().contains("refused"), "{what}: {}", r.fault());
        assert_eq!(c.get("/").json()["state"], "Not started", "{what}");
    }
    // Nothing was half-restored: the same VMM loads the genuine snapshot.
    let r = c.put("/snapshot/load", load_body(&saved.state, &saved.mem));
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    let stopped_at = last_tick(&saved.stdout);
    vm.running
        .wait_for_output(&format!("probe: tick {}\n", stopped_at + 2), TIMEOUT);
    vm.running.kill();
}

#[test]
fn create_is_refused_unless_paused_and_load_after_configuration() {
    let test = "create_is_refused_unless_paused_and_load_after_configuration";
    if !kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let create = json!({"snapshot_path": dir.path().join("s"),
                        "mem_file_path": dir.path().join("m")});
    let mut vm = ApiVm::start(&[]);
    let mut c = vm.client();
    let r = c.put("/snapshot/create", create.clone());
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("before starting"), "{}", r.fault());
    // Logger and metrics do not count as configuration; the machine config does.
    let r = c.put("/logger", json!({"level": "Info"}));
    assert_eq!(r.status, 204, "{}", r.body);
    configure_probe(&mut c, "probe.run=ticker", 32);
    let r = c.put(
        "/snapshot/load",
        load_body(&dir.path().join("s"), &dir.path().join("m")),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.fault(),
        "Loading a microVM snapshot not allowed after configuring boot-specific resources."
    );
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.wait_for_output("probe: tick 1\n", TIMEOUT);
    let r = c.put("/snapshot/create", create.clone());
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("not paused"), "{}", r.fault());
    assert!(
        !dir.path().join("m").exists(),
        "a refused create wrote memory"
    );
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_path": "/s", "mem_file_path": "/m",
                                             "mem_backend": {}}),
    );
    assert_eq!(r.status, 400);
    vm.running.kill();
}

#[test]
fn a_restored_guest_uses_its_drive_and_entropy_device_and_sees_a_drive_patch() {
    let test = "a_restored_guest_uses_its_drive_and_entropy_device_and_sees_a_drive_patch";
    if !kvm_available(test) {
        return;
    }
    let setup = |c: &mut ApiClient, dir: &Path| {
        let disk = dir.join("old.img");
        std::fs::write(&disk, vec![0x11u8; 8 * SECTOR]).unwrap();
        let r = c.put(
            "/drives/data",
            json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false,
                   "is_read_only": false}),
        );
        assert_eq!(r.status, 204, "{}", r.body);
        let r = c.put("/entropy", json!({}));
        assert_eq!(r.status, 204, "{}", r.body);
    };
    // The first rng activates the entropy device; blk-watch activates the drive and waits
    // for its configuration to change; the snapshot is taken while it waits.
    let saved = boot_and_save_with(
        "probe.run=rng,blk-watch,rng,idle",
        64,
        "probe: blk-watch waiting sectors=8",
        Some(KEY),
        &setup,
    );
    assert!(saved.stdout.contains("probe: rng ok"), "{}", saved.stdout);
    let new = saved.dir.path().join("new.img");
    let content: Vec<u8> = (0..16 * SECTOR).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&new, &content).unwrap();

    let mut flags = key_flag(saved.dir.path(), "key2", KEY);
    flags.push("--snapshot-dir".into());
    flags.push(saved.dir.path().to_string_lossy().into_owned());
    let mut clone = ApiVm::start(&args(&flags));
    let mut c = clone.client();
    let r = c.put("/snapshot/load", load_body(&saved.state, &saved.mem));
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let config = c.get("/vm/config").json();
    assert_eq!(config["drives"][0]["drive_id"], "data", "{config}");
    assert_eq!(config["entropy"], json!({}), "{config}");
    // The restored drive takes a PATCH; the waiting guest sees it through the restored
    // transport's config interrupt and reads the new first sector through its queue.
    let r = c.patch(
        "/drives/data",
        json!({"drive_id": "data", "path_on_host": new}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let line = format!(
        "probe: blk-watch ok sectors=16 crc32={:08x}",
        crc32(&content[..SECTOR])
    );
    clone.running.wait_for_output(&line, TIMEOUT);
    // The entropy device, active when saved, is reset and used again by the guest.
    clone.running.wait_for_output("probe: rng ok", TIMEOUT);
    clone.running.kill();
}

/// Boots the vsock-echo probe with a vsock device at DIR/v.sock, saves it once it listens.
fn boot_vsock_echo_and_save() -> Saved {
    let setup = |c: &mut ApiClient, dir: &Path| {
        let r = c.put(
            "/vsock",
            json!({"guest_cid": 3, "uds_path": dir.join("v.sock")}),
        );
        assert_eq!(r.status, 204, "{}", r.body);
    };
    boot_and_save_with(
        "probe.run=vsock-echo probe.port=5000 probe.count=1 probe.secs=120",
        64,
        "probe: vsock-echo ready cid=3 port=5000",
        None,
        &setup,
    )
}

/// Loads `saved` in a new VMM with `extra` fields in the load body; the clone's guest must
/// see one transport reset, then echo a host client's bytes through `uds`.
fn load_and_echo_through(saved: &Saved, extra: serde_json::Value, uds: &Path) {
    let flags = vec![
        "--snapshot-dir".to_string(),
        saved.dir.path().to_string_lossy().into_owned(),
    ];
    let mut clone = ApiVm::start(&args(&flags));
    let mut c = clone.client();
    let mut body = load_body(&saved.state, &saved.mem);
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = c.put("/snapshot/load", body);
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let config = c.get("/vm/config").json();
    assert_eq!(config["vsock"]["uds_path"], json!(uds), "{config}");
    assert_eq!(config["vsock"]["guest_cid"], 3, "{config}");
    // The driver is told its connections are gone and reads the CID again.
    clone
        .running
        .wait_for_output("probe: vsock-echo event id=0 cid=3\n", TIMEOUT);
    let s = common::vsock::host_connect(uds, 5000).unwrap();
    let data = common::vsock::pattern(256 * 1024, 0);
    let got = common::vsock::echo_round_trip(&s, &data);
    assert!(
        got == data,
        "echo after load: {} of {} bytes",
        got.len(),
        data.len()
    );
    s.shutdown(std::net::Shutdown::Both).unwrap();
    clone
        .running
        .wait_for_output("probe: vsock-echo ok conns=1", TIMEOUT);
    let out = clone.running.stdout();
    assert_eq!(
        out.matches("probe: vsock-echo event").count(),
        1,
        "one transport reset: {out}"
    );
    clone.running.kill();
}

#[test]
fn a_vsock_guest_restored_in_a_new_process_gets_a_transport_reset_and_echoes_at_the_same_socket() {
    let test = "a_vsock_guest_restored_in_a_new_process_gets_a_transport_reset_and_echoes_at_the_same_socket";
    if !kvm_available(test) {
        return;
    }
    let saved = boot_vsock_echo_and_save();
    assert!(
        !saved.stdout.contains("probe: vsock-echo event"),
        "{}",
        saved.stdout
    );
    // The killed VMM left its socket behind: the clone's listener replaces it.
    let uds = saved.dir.path().join("v.sock");
    load_and_echo_through(&saved, json!({}), &uds);
}

#[test]
fn creating_a_snapshot_leaves_the_running_vms_vsock_connection_open() {
    let test = "creating_a_snapshot_leaves_the_running_vms_vsock_connection_open";
    if !kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flags = vec![
        "--snapshot-dir".to_string(),
        dir.path().to_string_lossy().into_owned(),
    ];
    let mut vm = ApiVm::start(&args(&flags));
    let mut c = vm.client();
    configure_probe(
        &mut c,
        "probe.run=vsock-echo probe.port=5000 probe.count=1 probe.secs=120",
        64,
    );
    let uds = dir.path().join("v.sock");
    let r = c.put("/vsock", json!({"guest_cid": 3, "uds_path": uds}));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running
        .wait_for_output("probe: vsock-echo ready cid=3 port=5000", TIMEOUT);
    let s = common::vsock::host_connect(&uds, 5000).unwrap();
    let first = common::vsock::pattern(64 * 1024, 0);
    assert!(common::vsock::echo_round_trip(&s, &first) == first);
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_path": dir.path().join("s"), "mem_file_path": dir.path().join("m")}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    let r = c.patch("/vm", json!({"state": "Resumed"}));
    assert_eq!(r.status, 204, "{}", r.body);
    // The same connection keeps echoing; the source guest gets no transport reset.
    let second = common::vsock::pattern(64 * 1024, 7);
    let got = common::vsock::echo_round_trip(&s, &second);
    assert!(got == second, "echo after create: {} bytes", got.len());
    s.shutdown(std::net::Shutdown::Both).unwrap();
    vm.running
        .wait_for_output("probe: vsock-echo ok conns=1", TIMEOUT);
    let out = vm.running.stdout();
    assert!(!out.contains("probe: vsock-echo event"), "{out}");
    assert!(out.contains("bytes=131072"), "{out}");
    vm.running.kill();
}

#[test]
fn a_vsock_override_moves_the_clones_socket_and_a_bad_one_is_refused() {
    let test = "a_vsock_override_moves_the_clones_socket_and_a_bad_one_is_refused";
    if !kvm_available(test) {
        return;
    }
    let saved = boot_vsock_echo_and_save();
    // A uds_path PUT /vsock would refuse (over 96 bytes) is refused, the VMM stays fresh.
    let flags = vec![
        "--snapshot-dir".to_string(),
        saved.dir.path().to_string_lossy().into_owned(),
    ];
    let vm = ApiVm::start(&args(&flags));
    let mut c = vm.client();
    let mut body = load_body(&saved.state, &saved.mem);
    body["vsock_override"] = json!({"uds_path": format!("/tmp/{}", "a".repeat(100))});
    let r = c.put("/snapshot/load", body);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("uds_path"), "{}", r.body);
    vm.running.kill();
    let uds = saved.dir.path().join("clone.sock");
    load_and_echo_through(&saved, json!({"vsock_override": {"uds_path": uds}}), &uds);
}

#[test]
fn a_clone_snapshots_over_the_files_it_was_loaded_from_and_keeps_running() {
    // Firecracker's clients refresh a golden snapshot in place: the clone's memory is mapped
    // from the very file the new snapshot replaces. Writing into that file would pull the
    // clone's own pages from under it (SIGBUS on truncation, or a memory file that changes
    // while it is the clone's RAM); the new files must replace the old ones whole.
    let test = "a_clone_snapshots_over_the_files_it_was_loaded_from_and_keeps_running";
    if !kvm_available(test) {
        return;
    }
    let saved = boot_and_save("probe.run=ticker", 64, "probe: tick 2\n", Some(KEY));
    let stopped_at = last_tick(&saved.stdout);
    let mut flags = key_flag(saved.dir.path(), "key2", KEY);
    flags.push("--snapshot-dir".into());
    flags.push(saved.dir.path().to_string_lossy().into_owned());
    let mut clone = ApiVm::start(&args(&flags));
    let mut c = clone.client();
    let r = c.put("/snapshot/load", load_body(&saved.state, &saved.mem));
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    clone
        .running
        .wait_for_output(&format!("probe: tick {}\n", stopped_at + 2), TIMEOUT);
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": saved.state, "mem_file_path": saved.mem}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let second_stop = last_tick(&clone.running.stdout());
    assert!(second_stop >= stopped_at + 2);
    let mode = std::fs::metadata(&saved.mem).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "memory file mode {mode:o}");
    // The clone itself goes on from its own RAM.
    let r = c.patch("/vm", json!({"state": "Resumed"}));
    assert_eq!(r.status, 204, "{}", r.body);
    clone
        .running
        .wait_for_output(&format!("probe: tick {}\n", second_stop + 2), TIMEOUT);
    assert_eq!(c.get("/").json()["state"], "Running");
    clone.running.kill();
    // And the replaced files are a snapshot of the clone at its second stop.
    let flags = key_flag(saved.dir.path(), "key3", KEY);
    let mut third = ApiVm::start(&args(&flags));
    let mut c = third.client();
    let r = c.put("/snapshot/load", load_body(&saved.state, &saved.mem));
    assert_eq!(r.status, 204, "{}\n{}", r.body, third.running.stderr());
    third
        .running
        .wait_for_output(&format!("probe: tick {}\n", second_stop + 2), TIMEOUT);
    let out = third.running.stdout();
    assert!(
        !out.contains(&format!("probe: tick {stopped_at}\n")),
        "the third VM started from the first snapshot:\n{out}"
    );
    third.running.kill();
}

#[test]
fn a_memory_file_rewritten_at_its_size_is_refused_when_created_with_hash_memory() {
    let test = "a_memory_file_rewritten_at_its_size_is_refused_when_created_with_hash_memory";
    if !kvm_available(test) {
        return;
    }
    let saved = boot_and_save("probe.run=ticker", 32, "probe: tick 2\n", Some(KEY));
    let dir = saved.dir.path();
    // The default binds only the size: a same-size rewrite is not caught (README says so).
    let flags = key_flag(dir, "key2", KEY);
    let mut fsd = vec![
        "--snapshot-dir".to_string(),
        dir.to_string_lossy().into_owned(),
    ];
    fsd.extend(flags);
    let vm = ApiVm::start(&args(&fsd));
    let mut c = vm.client();
    let r = c.put("/snapshot/load", load_body(&saved.state, &saved.mem));
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let (state, mem) = (dir.join("hashed-state"), dir.join("hashed-mem"));
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_path": state, "mem_file_path": mem, "hash_memory": true}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    vm.running.kill();
    let rewritten = dir.join("rewritten-mem");
    let mut bytes = std::fs::read(&mem).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x80;
    std::fs::write(&rewritten, &bytes).unwrap();

    let flags = key_flag(dir, "key3", KEY);
    let vm = ApiVm::start(&args(&flags));
    let mut c = vm.client();
    let r = c.put("/snapshot/load", load_body(&state, &rewritten));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("refused"), "{}", r.fault());
    assert_eq!(c.get("/").json()["state"], "Not started");
    let r = c.put("/snapshot/load", load_body(&state, &mem));
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    assert_eq!(c.get("/").json()["state"], "Running");
    vm.running.kill();
}
