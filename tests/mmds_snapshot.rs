//! MMDS across `PUT /snapshot/create` and `PUT /snapshot/load` in a new process, as a
//! Firecracker client expects: the state file records the MMDS configuration and never the
//! data store; the clone serves the store of its own process (`PUT /mmds` before the load is
//! allowed and does not count as configuring the VM) under a new token key, so tokens the
//! parent issued are refused. The probe guest checks the files and the API quickly; the
//! Linux guest (busybox `nc` through the vsock agent, as in tests/mmds_linux.rs) checks what a
//! guest sees across the load: the parent's token gets 401 in each clone, as does one clone's
//! token in its sibling, and a new token reads the clone's own data.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade::mmds::MmdsConfig;
use palisade::snapshot::StateFile;
use palisade::vmm::machine_state::MachineState;
use serde_json::{json, Value};

use common::agent::wait_for_agent;
use common::api::ApiClient;
use common::linux::boot_source;
use common::mmds_guest::{body_of, guest_get, guest_token, status_of};
use common::netns::{TapNetns, GUEST_MAC};
use common::{kvm_available, palisade_bin, probe_path, ApiVm};

const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
const LINUX_TIMEOUT: Duration = Duration::from_secs(600);
/// In the parent's store only: no file may hold it.
const SECRET: &str = "parent-secret-6f1c2a9e";

fn put_ok(c: &mut ApiClient, path: &str, body: Value) {
    let r = c.put(path, body);
    assert_eq!(r.status, 204, "PUT {path}: {}", r.body);
}

/// The files of a saved VM.
struct Saved {
    dir: tempfile::TempDir,
    state: PathBuf,
    mem: PathBuf,
}

/// Pauses the VM behind `c`, creates a Full snapshot in `dir` (its `--snapshot-dir`).
fn pause_and_save(c: &mut ApiClient, dir: tempfile::TempDir) -> Saved {
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let (state, mem) = (dir.path().join("state"), dir.path().join("mem"));
    put_ok(
        c,
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    Saved { dir, state, mem }
}

fn load_body(saved: &Saved) -> Value {
    json!({"snapshot_path": saved.state,
           "mem_backend": {"backend_type": "File", "backend_path": saved.mem},
           "resume_vm": true})
}

/// The state file decoded as a load decodes it (unkeyed).
fn saved_state(path: &Path) -> MachineState {
    let bytes = std::fs::read(path).unwrap();
    StateFile::open(&bytes, None).unwrap().state().unwrap()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// `palisade --describe-snapshot PATH`'s output.
fn describe(path: &Path) -> String {
    let out = std::process::Command::new(palisade_bin())
        .arg("--describe-snapshot")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn mmds_config_is_saved_and_restored_and_the_store_is_not_in_the_files() {
    let test = "mmds_config_is_saved_and_restored_and_the_store_is_not_in_the_files";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let snapshot_dir = dir.path().to_string_lossy().into_owned();
    let metadata = dir.path().join("metadata.json");
    std::fs::write(&metadata, json!({"boot": SECRET}).to_string()).unwrap();
    let mut vm = ApiVm::start_in_netns(
        tempfile::tempdir().unwrap(),
        Some(&ns.name),
        &[
            "--snapshot-dir",
            &snapshot_dir,
            "--metadata",
            metadata.to_str().unwrap(),
        ],
    );
    let mut c = vm.client();
    // Palisade's fields too (`GET /vm/config` shows them filled in; set here so that the
    // snapshot is seen to carry them).
    let config = json!({"version": "V1", "network_interfaces": ["eth0"],
                        "ipv4_address": "169.254.170.2", "imds_compat": true,
                        "hop_limit": 3, "rate_limiter": {"ops": {"size": 20, "refill_time": 1000}}});
    for (path, body) in [
        (
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 32}),
        ),
        (
            "/boot-source",
            json!({"kernel_image_path": probe_path(),
                   "boot_args": "console=ttyS0 probe.run=idle"}),
        ),
        (
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": GUEST_MAC}),
        ),
        ("/mmds/config", config.clone()),
        ("/actions", json!({"action_type": "InstanceStart"})),
    ] {
        put_ok(&mut c, path, body);
    }
    let r = c.patch("/mmds", json!({"credentials": {"token": SECRET}}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.wait_for_output("probe: idle ok", PROBE_TIMEOUT);
    let saved = pause_and_save(&mut c, dir);
    vm.running.kill();

    // The configuration as validated is in the state; the store is in no file.
    let state = saved_state(&saved.state);
    let recorded = state.recorded_mmds().unwrap().unwrap();
    let expected: MmdsConfig = serde_json::from_value(config.clone()).unwrap();
    assert_eq!(recorded, expected);
    assert!(!contains(&std::fs::read(&saved.state).unwrap(), SECRET));
    assert!(!contains(&std::fs::read(&saved.mem).unwrap(), SECRET));
    let text = describe(&saved.state);
    assert!(
        text.contains("mmds-config: {") && text.contains("169.254.170.2"),
        "{text}"
    );

    // A new process: PUT /mmds before the load is allowed (not a boot resource), and is
    // the store the clone serves.
    let snapshot_dir = saved.dir.path().to_string_lossy().into_owned();
    let clone = ApiVm::start_in_netns(
        tempfile::tempdir().unwrap(),
        Some(&ns.name),
        &["--snapshot-dir", &snapshot_dir],
    );
    let mut c = clone.client();
    put_ok(&mut c, "/mmds", json!({"clone": "new-data"}));
    let r = c.put("/snapshot/load", load_body(&saved));
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let full = c.get("/vm/config").json();
    assert_eq!(full["mmds-config"], config, "{full}");
    let log = clone.running.wait_for_log(
        "MMDS V1 restored on eth0 with a new token key",
        Duration::from_secs(10),
    );
    assert!(!log.contains("new-data") && !log.contains(SECRET), "{log}");
    let r = c.get("/mmds");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"clone": "new-data"}));
    // PUT /mmds/config stays a boot-time resource on the restored VM.
    let r = c.put("/mmds/config", config.clone());
    assert_eq!(r.status, 400, "{}", r.body);
    // The clone's own snapshot carries the configuration on, and its store is not in it.
    let again = tempfile::tempdir_in(saved.dir.path()).unwrap();
    let resaved = pause_and_save(&mut c, again);
    let state = saved_state(&resaved.state);
    assert_eq!(state.recorded_mmds().unwrap(), Some(expected));
    assert!(!contains(
        &std::fs::read(&resaved.state).unwrap(),
        "new-data"
    ));
    drop(clone);

    // A clone whose process put nothing in its store serves an empty one.
    let clone = ApiVm::start_in_netns(
        tempfile::tempdir().unwrap(),
        Some(&ns.name),
        &["--snapshot-dir", &snapshot_dir],
    );
    let mut c = clone.client();
    let r = c.put("/snapshot/load", load_body(&saved));
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let r = c.get("/mmds");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({}));
    assert_eq!(c.get("/vm/config").json()["mmds-config"], config);
}

#[test]
fn a_snapshot_of_a_vm_without_mmds_restores_without_it() {
    let test = "a_snapshot_of_a_vm_without_mmds_restores_without_it";
    if !kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snapshot_dir = dir.path().to_string_lossy().into_owned();
    let mut vm = ApiVm::start(&["--snapshot-dir", &snapshot_dir]);
    let mut c = vm.client();
    put_ok(
        &mut c,
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 32}),
    );
    put_ok(
        &mut c,
        "/boot-source",
        json!({"kernel_image_path": probe_path(), "boot_args": "console=ttyS0 probe.run=idle"}),
    );
    put_ok(&mut c, "/actions", json!({"action_type": "InstanceStart"}));
    vm.running.wait_for_output("probe: idle ok", PROBE_TIMEOUT);
    let saved = pause_and_save(&mut c, dir);
    vm.running.kill();

    let state = saved_state(&saved.state);
    assert_eq!(state.recorded_mmds().unwrap(), None);
    assert!(
        !state.device_configs.contains("mmds"),
        "{}",
        state.device_configs
    );
    assert!(describe(&saved.state).contains("mmds-config: none"));

    let snapshot_dir = saved.dir.path().to_string_lossy().into_owned();
    let clone = ApiVm::start(&["--snapshot-dir", &snapshot_dir]);
    let mut c = clone.client();
    let r = c.put("/snapshot/load", load_body(&saved));
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let full = c.get("/vm/config").json();
    assert_eq!(full["mmds-config"], Value::Null, "{full}");
    // Firecracker's answer on a running VM that never had a store.
    let r = c.get("/mmds");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("not initialized"), "{}", r.body);
}

/// A new VMM process in `ns` restored from `saved` on `tap` (`network_overrides`), its store
/// filled with `instance_id` by `PUT /mmds` before the load; the clone and its vsock socket.
fn start_clone(saved: &Saved, ns: &TapNetns, tap: &str, instance_id: &str) -> (ApiVm, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let snapshot_dir = saved.dir.path().to_string_lossy().into_owned();
    let clone = ApiVm::start_in_netns(dir, Some(&ns.name), &["--snapshot-dir", &snapshot_dir]);
    let mut c = clone.client();
    put_ok(
        &mut c,
        "/mmds",
        json!({"latest": {"meta-data": {"instance-id": instance_id}}}),
    );
    let mut body = load_body(saved);
    body["network_overrides"] = json!([{"iface_id": "eth0", "host_dev_name": tap}]);
    body["vsock_override"] = json!({"uds_path": uds});
    let r = c.put("/snapshot/load", body);
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let full = c.get("/vm/config").json();
    assert_eq!(
        full["mmds-config"]["network_interfaces"],
        json!(["eth0"]),
        "{full}"
    );
    wait_for_agent(&uds, LINUX_TIMEOUT);
    (clone, uds)
}

/// The clone's guest reads its own store with its own new token, which it returns.
fn clone_reads_its_own_store(uds: &Path, instance_id: &str) -> String {
    let token = guest_token(uds, 21600);
    let got = guest_get(uds, "/latest/meta-data", Some(&token));
    assert_eq!(status_of(&got), 200, "{got}");
    let value: Value = serde_json::from_str(body_of(&got)).unwrap();
    assert_eq!(value, json!({"instance-id": instance_id}));
    token
}

#[test]
fn linux_clones_refuse_the_parents_and_each_others_tokens_and_serve_their_own_stores() {
    let test = "linux_clones_refuse_the_parents_and_each_others_tokens_and_serve_their_own_stores";
    if !kvm_available(test) {
        return;
    }
    let Some(parent_ns) = TapNetns::create(test) else {
        return;
    };
    // Each clone runs in a namespace of its own, on its own tap (`network_overrides`).
    let Some(ns_a) = TapNetns::create_with_tap(test, "tap1") else {
        return;
    };
    let Some(ns_b) = TapNetns::create_with_tap(test, "tap2") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let snapshot_dir = dir.path().to_string_lossy().into_owned();
    let api_dir = tempfile::tempdir().unwrap();
    // Short: uds_path has at most 96 bytes.
    let uds = api_dir.path().join("v.sock");
    let vm = ApiVm::start_in_netns(
        api_dir,
        Some(&parent_ns.name),
        &["--snapshot-dir", &snapshot_dir],
    );
    let mut c = vm.client();
    for (path, body) in [
        (
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 128}),
        ),
        (
            "/boot-source",
            boot_source("palisade.ip=10.0.0.2/24 palisade.gw=10.0.0.1"),
        ),
        (
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": GUEST_MAC}),
        ),
        ("/vsock", json!({"guest_cid": 3, "uds_path": uds})),
        ("/mmds/config", json!({"network_interfaces": ["eth0"]})),
        (
            "/mmds",
            json!({"latest": {"meta-data": {"instance-id": "i-parent", "secret": SECRET}}}),
        ),
        ("/actions", json!({"action_type": "InstanceStart"})),
    ] {
        put_ok(&mut c, path, body);
    }
    let mut running = vm.running;
    running.wait_for_output("palisade-net: eth0 up", LINUX_TIMEOUT);
    wait_for_agent(&uds, LINUX_TIMEOUT);
    let parent_token = guest_token(&uds, 21600);
    let got = guest_get(&uds, "/latest/meta-data/instance-id", Some(&parent_token));
    assert_eq!(status_of(&got), 200, "{got}");
    assert_eq!(body_of(&got), "\"i-parent\"", "{got}");
    let saved = pause_and_save(&mut c, dir);
    running.kill();
    assert!(!contains(&std::fs::read(&saved.state).unwrap(), SECRET));

    // Clone A: the parent's token (6 hours left) is refused, its key is new; a new token
    // reads A's store, PUT before the load.
    let (clone_a, uds_a) = start_clone(&saved, &ns_a, "tap1", "i-clone-a");
    let old = guest_get(&uds_a, "/latest/meta-data/instance-id", Some(&parent_token));
    assert_eq!(status_of(&old), 401, "{old}");
    let token_a = clone_reads_its_own_store(&uds_a, "i-clone-a");
    // A PATCH after the load is what the guest reads next.
    let r = clone_a
        .client()
        .patch("/mmds", json!({"latest": {"meta-data": {"zone": "z2"}}}));
    assert_eq!(r.status, 204, "{}", r.body);
    let got = guest_get(&uds_a, "/latest/meta-data/zone", Some(&token_a));
    assert_eq!(body_of(&got), "\"z2\"", "{got}");

    // Clone B, from the same snapshot at the same time: A's token is refused there.
    let (_clone_b, uds_b) = start_clone(&saved, &ns_b, "tap2", "i-clone-b");
    let other = guest_get(&uds_b, "/latest/meta-data/instance-id", Some(&token_a));
    assert_eq!(status_of(&other), 401, "{other}");
    clone_reads_its_own_store(&uds_b, "i-clone-b");
}
