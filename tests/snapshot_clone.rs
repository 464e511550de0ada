//! Clones know they are clones (issue 14): every VM shows its guest a generation ID page
//! (`palisade_genid=` on the command line); each VM loaded from a snapshot sees a new random
//! ID and the saved restore counter plus one, and its virtio-rng draws from the host, so two
//! clones of one snapshot share no RNG state; a clone's rate limiter has the budget that was
//! left, not a full bucket. And a snapshot create whose state file cannot replace its target
//! leaves the old pair on disk, still loadable.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::api::ApiClient;
use common::{kvm_available, probe_path, ApiVm};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

fn configure_probe(client: &mut ApiClient, boot_args: &str, mib: usize) {
    let r = client.put(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": mib}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = client.put(
        "/boot-source",
        json!({"kernel_image_path": probe_path(),
               "boot_args": format!("console=ttyS0 {boot_args}")}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
}

fn snapshot_dir_flags(dir: &Path) -> Vec<String> {
    vec!["--snapshot-dir".into(), dir.to_string_lossy().into_owned()]
}

fn start(flags: &[String]) -> ApiVm {
    ApiVm::start(&flags.iter().map(String::as_str).collect::<Vec<_>>())
}

fn load_body(state: &Path, mem: &Path) -> serde_json::Value {
    json!({"snapshot_path": state,
           "mem_backend": {"backend_type": "File", "backend_path": mem},
           "resume_vm": true})
}

/// The (id, counter) of every complete `probe: genid ok id=... counter=N` line in `out`.
fn generations(out: &str) -> Vec<(String, u64)> {
    out.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n')?.strip_prefix("probe: genid ok id="))
        .filter_map(|rest| {
            let (id, counter) = rest.split_once(" counter=")?;
            Some((id.to_string(), counter.trim().parse().ok()?))
        })
        .collect()
}

/// The CRC-32 of the `probe: rng ok ... crc32=X` line in `out`.
fn rng_crc(out: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.starts_with("probe: rng ok"))
        .unwrap_or_else(|| panic!("no rng line:\n{out}"));
    line.rsplit("crc32=").next().unwrap().trim().to_string()
}

/// A clone loaded from (state, mem): the genid line it printed after the restore, and the
/// CRC of the entropy it then drew.
fn clone_and_read(state: &Path, mem: &Path) -> ((String, u64), String) {
    let vm = start(&[]);
    let mut c = vm.client();
    let r = c.put("/snapshot/load", load_body(state, mem));
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    let mut running = vm.running;
    running.wait_for_output("probe: rng ok", TIMEOUT);
    let out = running.stdout();
    assert!(
        !out.contains("probe: ready"),
        "the clone booted again:\n{out}"
    );
    let seen = generations(&out);
    assert_eq!(seen.len(), 1, "one genid line after the restore:\n{out}");
    let crc = rng_crc(&out);
    running.kill();
    (seen[0].clone(), crc)
}

#[test]
fn two_clones_of_one_snapshot_see_new_generation_ids_the_counter_plus_one_and_other_entropy() {
    let test =
        "two_clones_of_one_snapshot_see_new_generation_ids_the_counter_plus_one_and_other_entropy";
    if !kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vm = start(&snapshot_dir_flags(dir.path()));
    let mut c = vm.client();
    // genid prints, then waits for the page to change; rng runs only in the clones.
    configure_probe(&mut c, "probe.run=genid,rng,idle probe.wait=1", 64);
    let r = c.put("/entropy", json!({}));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let mut running = vm.running;
    running.wait_for_output(" counter=0\n", TIMEOUT);
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let (state, mem) = (dir.path().join("state"), dir.path().join("mem"));
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, running.stderr());
    let out = running.stdout();
    running.kill();
    let original = generations(&out);
    assert_eq!(original.len(), 1, "{out}");
    let (original_id, original_counter) = original[0].clone();
    assert_eq!(original_counter, 0);
    assert_eq!(original_id.len(), 32, "{out}");
    assert!(!out.contains("probe: rng"), "{out}");

    let ((id_a, counter_a), crc_a) = clone_and_read(&state, &mem);
    let ((id_b, counter_b), crc_b) = clone_and_read(&state, &mem);
    assert_eq!((counter_a, counter_b), (1, 1));
    assert_ne!(id_a, original_id);
    assert_ne!(id_b, original_id);
    assert_ne!(id_a, id_b, "two clones of one snapshot see different IDs");
    assert_ne!(crc_a, crc_b, "the clones drew the same entropy");
}

/// Boots a ticker, pauses after `probe: tick 2`, creates a snapshot (state, mem) with
/// `hash_memory`, then lets it run on and pauses again: its RAM now differs from the file.
fn ticker_saved_then_moved_on(dir: &Path) -> (ApiVm, PathBuf, PathBuf) {
    let mut vm = start(&snapshot_dir_flags(dir));
    let mut c = vm.client();
    configure_probe(&mut c, "probe.run=ticker", 32);
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.wait_for_output("probe: tick 2\n", TIMEOUT);
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let (state, mem) = (dir.join("state"), dir.join("mem"));
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_path": state, "mem_file_path": mem, "hash_memory": true}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    let stopped = vm.running.stdout().matches("probe: tick ").count() as u64;
    let r = c.patch("/vm", json!({"state": "Resumed"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running
        .wait_for_output(&format!("probe: tick {}\n", stopped + 2), TIMEOUT);
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    (vm, state, mem)
}

#[test]
fn a_create_whose_state_file_cannot_be_renamed_leaves_the_old_pair_loadable() {
    let test = "a_create_whose_state_file_cannot_be_renamed_leaves_the_old_pair_loadable";
    if !kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (vm, state, mem) = ticker_saved_then_moved_on(dir.path());
    let mut c = vm.client();
    // The state file's target is a non-empty directory: the memory file is written and put
    // in place first, then the state file's rename fails.
    let blocked = dir.path().join("blocked");
    std::fs::create_dir_all(blocked.join("inside")).unwrap();
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_path": blocked, "mem_file_path": mem, "hash_memory": true}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    vm.running.kill();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["blocked", "mem", "state"], "no new file is left");
    // The old state file binds the old memory file's SHA-256: it loads only if the memory
    // file is the old one.
    let clone = start(&[]);
    let mut c = clone.client();
    let r = c.put("/snapshot/load", load_body(&state, &mem));
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let mut running = clone.running;
    running.wait_for_output("probe: tick ", TIMEOUT);
    running.kill();
}

/// `entropy_rate_limiter_throttled` summed over every metrics line flushed to `path`.
fn entropy_throttled(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["entropy"]["entropy_rate_limiter_throttled"].as_u64())
        .sum()
}

#[test]
fn a_clone_gets_the_entropy_budget_that_was_left_not_a_full_bucket() {
    let test = "a_clone_gets_the_entropy_budget_that_was_left_not_a_full_bucket";
    if !kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vm = start(&snapshot_dir_flags(dir.path()));
    let mut c = vm.client();
    // 8 KiB per hour: the original takes 4 KiB before the snapshot, so the clone has 4 KiB
    // left: its first rng completes, its second waits (a full bucket would pay for both).
    configure_probe(&mut c, "probe.run=rng,genid,rng,rng,idle probe.wait=1", 64);
    let r = c.put(
        "/entropy",
        json!({"rate_limiter": {"bandwidth": {"size": 8192, "refill_time": 3_600_000}}}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let mut running = vm.running;
    running.wait_for_output(" counter=0\n", TIMEOUT);
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let (state, mem) = (dir.path().join("state"), dir.path().join("mem"));
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, running.stderr());
    running.kill();

    let metrics = dir.path().join("clone-metrics.jsonl");
    let clone = start(&[
        "--metrics-path".into(),
        metrics.to_string_lossy().into_owned(),
    ]);
    let mut c = clone.client();
    let r = c.put("/snapshot/load", load_body(&state, &mem));
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let mut running = clone.running;
    running.wait_for_output("probe: rng ok", TIMEOUT);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while entropy_throttled(&metrics) == 0 {
        let out = running.stdout();
        assert_eq!(
            out.matches("probe: rng ok").count(),
            1,
            "the clone's limiter paid for a second request:\n{out}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "never throttled:\n{out}"
        );
        let r = c.put("/actions", json!({"action_type": "FlushMetrics"}));
        assert_eq!(r.status, 204, "{}", r.body);
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = running.stdout();
    assert_eq!(out.matches("probe: rng ok").count(), 1, "{out}");
    running.kill();
}
