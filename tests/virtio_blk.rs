//! virtio-blk under the real VMM and KVM, driven by the probe guest's own virtio driver.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{kvm_available, probe_path, ApiVm, TestVm};

const TIMEOUT: Duration = Duration::from_secs(60);
const SECTOR: usize = 512;

/// CRC-32 (IEEE), as the probe computes it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A disk image of `sectors` sectors with content that differs per sector and per seed.
fn disk(dir: &Path, name: &str, sectors: usize, seed: u8) -> (String, Vec<u8>) {
    let content: Vec<u8> = (0..sectors * SECTOR)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed)) as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &content).unwrap();
    (path.to_str().unwrap().to_string(), content)
}

fn drive(id: &str, path: &str, root: bool, read_only: bool) -> Value {
    json!({"drive_id": id, "path_on_host": path, "is_root_device": root,
           "is_read_only": read_only, "cache_type": "Writeback"})
}

/// `drive` with `io_engine` set: "Sync" or "Async" (io_uring).
fn drive_on(engine: &str, id: &str, path: &str, root: bool, read_only: bool) -> Value {
    let mut d = drive(id, path, root, read_only);
    d["io_engine"] = json!(engine);
    d
}

/// The value of `key=` in a result detail.
fn field<'a>(detail: &'a str, key: &str) -> &'a str {
    detail
        .split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {detail:?}"))
}

#[test]
fn blk_reads_the_whole_disk_and_its_write_reaches_the_host_file() {
    whole_disk_read_and_write(
        "blk_reads_the_whole_disk_and_its_write_reaches_the_host_file",
        "Sync",
    );
}

#[test]
fn an_async_drive_reads_the_whole_disk_and_its_write_reaches_the_host_file() {
    let test = "an_async_drive_reads_the_whole_disk_and_its_write_reaches_the_host_file";
    whole_disk_read_and_write(test, "Async");
}

fn whole_disk_read_and_write(test: &str, engine: &str) {
    if !kvm_available(test) {
        return;
    }
    let mut vm = TestVm::probe("blk", 1, 64);
    let (path, content) = disk(vm.dir.path(), "data.img", 8192, 3);
    vm.config["drives"] = json!([drive_on(engine, "data", &path, false, false)]);
    let run = vm.run(TIMEOUT);
    run.assert_success();
    let detail = run.assert_probe_ok("blk");
    assert_eq!(field(&detail, "crc32"), format!("{:08x}", crc32(&content)));
    assert_eq!(field(&detail, "id"), "data");
    assert_eq!(field(&detail, "sectors"), "8192");
    assert_eq!(field(&detail, "write"), "ok");
    // Written and flushed: the host file has the mark at the start of the last sector and
    // nothing else changed.
    let after = std::fs::read(&path).unwrap();
    let last = after.len() - SECTOR;
    assert_eq!(&after[last..last + 14], b"palisade-probe");
    assert_eq!(&after[last + 14..], &content[last + 14..]);
    assert_eq!(&after[..last], &content[..last]);
}

#[test]
fn a_read_only_drive_refuses_the_guests_write() {
    read_only_refuses_writes("a_read_only_drive_refuses_the_guests_write", "Sync");
}

#[test]
fn a_read_only_async_drive_refuses_the_guests_write() {
    read_only_refuses_writes("a_read_only_async_drive_refuses_the_guests_write", "Async");
}

fn read_only_refuses_writes(test: &str, engine: &str) {
    if !kvm_available(test) {
        return;
    }
    let mut vm = TestVm::probe("blk", 1, 64);
    let (path, content) = disk(vm.dir.path(), "ro.img", 64, 5);
    vm.config["drives"] = json!([drive_on(engine, "ro", &path, false, true)]);
    let run = vm.run(TIMEOUT);
    run.assert_success();
    let detail = run.assert_probe_ok("blk");
    assert_eq!(field(&detail, "write"), "refused");
    assert_eq!(std::fs::read(&path).unwrap(), content);
}

#[test]
fn hostile_chains_get_ioerr_or_needs_reset_counted_and_the_vmm_stays_up() {
    let test = "hostile_chains_get_ioerr_or_needs_reset_counted_and_the_vmm_stays_up";
    hostile_chains(test, "Sync");
}

#[test]
fn hostile_chains_to_an_async_drive_get_ioerr_or_needs_reset_and_the_vmm_stays_up() {
    let test = "hostile_chains_to_an_async_drive_get_ioerr_or_needs_reset_and_the_vmm_stays_up";
    hostile_chains(test, "Async");
}

/// The probe's blk-hostile cases, then a good read of the whole disk.
fn hostile_chains(test: &str, engine: &str) {
    if !kvm_available(test) {
        return;
    }
    let mut vm = TestVm::probe("blk-hostile,blk", 1, 64);
    let (path, content) = disk(vm.dir.path(), "data.img", 256, 7);
    vm.config["drives"] = json!([drive_on(engine, "data", &path, false, false)]);
    let metrics = vm.dir.path().join("metrics.json");
    vm.args
        .extend(["--metrics-path".into(), metrics.to_str().unwrap().into()]);
    let run = vm.run(TIMEOUT);
    run.assert_success();
    let detail = run.assert_probe_ok("blk-hostile");
    assert_eq!(detail, "cases=15 ioerr=8 reset=7");
    // The device serves good requests after all that, and wrote nothing for the bad ones.
    let blk = run.assert_probe_ok("blk");
    assert_eq!(field(&blk, "crc32"), format!("{:08x}", crc32(&content)));
    assert!(run.stderr.contains("bad request refused"), "{}", run.stderr);
    assert!(
        run.stderr.contains("device needs a reset"),
        "{}",
        run.stderr
    );
    let totals = sum_metrics(&metrics, "block_data");
    assert_eq!(totals["execute_fails"], 8, "{totals:?}");
    // Each of the 6 queue-breaking cases entered needs-reset, and nothing else did (the 7th
    // reset, the rings outside RAM, is the transport's). The probe resets the device before it
    // rewrites the rings: zeroing them under a live device made a late kick count a 7th.
    assert_eq!(totals["needs_reset_count"], 6, "{totals:?}");
    assert!(totals["activate_fails"] == 0 && totals["read_count"] > 0);
    // The rings outside guest RAM were refused by the transport at DRIVER_OK.
    assert!(sum_metrics(&metrics, "virtio")["activate_fails"] >= 1);
}

/// Every line's `group` counters summed (counters report deltas per flush).
fn sum_metrics(path: &Path, group: &str) -> std::collections::BTreeMap<String, u64> {
    let mut totals = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(g) = v[group].as_object() {
            for (k, n) in g {
                *totals.entry(k.clone()).or_insert(0) += n.as_u64().unwrap_or(0);
            }
        }
    }
    totals
}

#[test]
fn eight_drives_and_the_entropy_device_get_slots_in_order_root_first() {
    if !kvm_available("eight_drives_and_the_entropy_device_get_slots_in_order_root_first") {
        return;
    }
    let mut vm = TestVm::probe("virtio", 1, 64);
    let mut drives = Vec::new();
    for i in 0..8 {
        let (path, _) = disk(vm.dir.path(), &format!("d{i}.img"), 8, i as u8);
        let id = if i == 2 {
            "root".to_string()
        } else {
            format!("d{i}")
        };
        drives.push(drive(&id, &path, i == 2, false));
    }
    vm.config["drives"] = Value::Array(drives.clone());
    vm.config["entropy"] = json!({});
    let run = vm.run(TIMEOUT);
    run.assert_success();
    let expected = ["root", "d0", "d1", "d3", "d4", "d5", "d6", "d7"]
        .iter()
        .enumerate()
        .map(|(i, id)| format!("blk:{id}@{:#x}:{}", 0xc000_1000 + 0x1000 * i, 5 + i))
        .chain(std::iter::once("rng@0xc0009000:13".to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(run.assert_probe_ok("virtio"), format!("count=9 {expected}"));

    // A ninth drive is refused before anything runs.
    let mut vm = TestVm::probe("virtio", 1, 64);
    let (path, _) = disk(vm.dir.path(), "d8.img", 8, 8);
    drives.push(drive("d8", &path, false, false));
    vm.config["drives"] = Value::Array(drives);
    let run = vm.run(TIMEOUT);
    assert_eq!(run.status.code(), Some(152), "{}", run.stderr);
    assert!(run.stderr.contains("at most 8 drives"), "{}", run.stderr);
}

#[test]
fn a_throttled_drive_never_reads_faster_than_its_bandwidth() {
    if !kvm_available("a_throttled_drive_never_reads_faster_than_its_bandwidth") {
        return;
    }
    // 10 MiB/s: a 1 MiB bucket refilled every 100 ms; 24 MiB to read, 256 KiB per request.
    let mut vm = TestVm::probe("blk-bench", 1, 64);
    vm.config["boot-source"]["boot_args"] =
        json!("console=ttyS0 probe.run=blk-bench probe.blk_chunk=256");
    let (path, _) = disk(vm.dir.path(), "big.img", 24 * 2048, 1);
    let mut d = drive("data", &path, false, true);
    d["rate_limiter"] = json!({"bandwidth": {"size": 1 << 20, "refill_time": 100}});
    vm.config["drives"] = json!([d]);
    let mut running = vm.spawn();
    running.wait_for_output("probe: blk-bench read-start", TIMEOUT);
    let start = Instant::now();
    running.wait_for_output("probe: blk-bench read-done", TIMEOUT);
    let elapsed = start.elapsed().as_secs_f64();
    let run = running.wait(TIMEOUT);
    run.assert_success();
    let mib_per_s = 24.0 / elapsed;
    println!("throttled read: {mib_per_s:.2} MiB/s over {elapsed:.2} s (configured 10 MiB/s)");
    // Never faster than configured: the first 1 MiB bucket is free, so 24 MiB take at least
    // 2.3 s (10.4 MiB/s); the host starts its stopwatch when it reads "read-start", late by
    // up to a scheduling delay, hence 11.5. A loaded machine only makes it slower, and
    // closeness is the benchmark's figure.
    assert!(
        (2.5..=11.5).contains(&mib_per_s),
        "{mib_per_s:.2} MiB/s over {elapsed:.2} s, configured 10 MiB/s"
    );
}

#[test]
fn drives_are_configured_and_patched_through_the_api() {
    configured_and_patched("drives_are_configured_and_patched_through_the_api", "Sync");
}

#[test]
fn async_drives_are_configured_and_patched_through_the_api_and_shown_as_async() {
    let test = "async_drives_are_configured_and_patched_through_the_api_and_shown_as_async";
    configured_and_patched(test, "Async");
}

/// PUT, PATCH of the file while the guest waits for it, PATCH of the limiter, GET /vm/config.
fn configured_and_patched(test: &str, engine: &str) {
    if !kvm_available(test) {
        return;
    }
    // Landlock confines the VMM to the files configured at InstanceStart; a new
    // path_on_host needs the layer off (or the new file among the configured ones).
    let vm = ApiVm::start(&["--no-landlock"]);
    let mut c = vm.client();
    let (old, _) = disk(vm.dir.path(), "old.img", 8, 1);
    let (new, new_content) = disk(vm.dir.path(), "new.img", 16, 2);
    let r = c.put(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put(
        "/boot-source",
        json!({"kernel_image_path": probe_path(),
               "boot_args": "console=ttyS0 probe.run=blk-watch,rng,idle"}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/drives/data", drive("other", &old, false, false));
    assert_eq!(
        r.fault(),
        "The id from the path does not match the id from the body!"
    );
    let r = c.put(
        "/drives/data",
        drive("data", "/nonexistent/x.img", false, false),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.fault().contains("cannot open /nonexistent/x.img"),
        "{}",
        r.body
    );
    let r = c.patch(
        "/drives/data",
        json!({"drive_id": "data", "path_on_host": new}),
    );
    assert_eq!(
        r.fault(),
        "The requested operation is not supported before starting the microVM."
    );
    let r = c.put("/drives/data", drive_on(engine, "data", &old, false, false));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/entropy", json!({}));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);

    let mut running = vm.running;
    running.wait_for_output("probe: blk-watch waiting sectors=8", TIMEOUT);
    let r = c.patch(
        "/drives/data",
        json!({"drive_id": "data", "path_on_host": new}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let line = format!(
        "probe: blk-watch ok sectors=16 crc32={:08x}",
        crc32(&new_content[..SECTOR])
    );
    running.wait_for_output(&line, TIMEOUT);
    running.wait_for_output("probe: rng ok", TIMEOUT);

    let limits = json!({"bandwidth": {"size": 1000000, "refill_time": 100}});
    let r = c.patch(
        "/drives/data",
        json!({"drive_id": "data", "rate_limiter": limits}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.patch(
        "/drives/nope",
        json!({"drive_id": "nope", "path_on_host": new}),
    );
    assert!(r.fault().contains("No drive with id 'nope'"), "{}", r.body);
    let r = c.put("/drives/data2", drive("data2", &old, false, false));
    assert_eq!(
        r.fault(),
        "The requested operation is not supported after starting the microVM."
    );
    let config = c.get("/vm/config").json();
    assert_eq!(config["drives"][0]["path_on_host"], json!(new));
    assert_eq!(config["drives"][0]["io_engine"], json!(engine));
    assert_eq!(
        config["drives"][0]["rate_limiter"]["bandwidth"]["size"],
        1000000
    );
    assert_eq!(config["entropy"], json!({"rate_limiter": null}));
    running.kill();
}

#[test]
fn an_async_drive_serves_32_requests_in_flight_in_every_pattern() {
    if !kvm_available("an_async_drive_serves_32_requests_in_flight_in_every_pattern") {
        return;
    }
    let mut vm = TestVm::probe("blk-iops", 1, 64);
    vm.config["boot-source"]["boot_args"] =
        json!("console=ttyS0 probe.run=blk-iops probe.count=4000 probe.blk_qd=32");
    let (path, _) = disk(vm.dir.path(), "data.img", 2048, 9);
    vm.config["drives"] = json!([drive_on("Async", "data", &path, false, false)]);
    let run = vm.run(TIMEOUT);
    run.assert_success();
    assert_eq!(run.assert_probe_ok("blk-iops"), "ops=4000 kib=4 qd=32");
    for pass in ["seqread", "randread", "seqwrite", "randwrite"] {
        assert!(run
            .stdout
            .contains(&format!("probe: blk-iops {pass}-done ops=4000")));
    }
}

#[test]
fn a_snapshot_taken_with_async_requests_in_flight_resumes_with_none_lost() {
    let test = "a_snapshot_taken_with_async_requests_in_flight_resumes_with_none_lost";
    if !kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--snapshot-dir", dir.path().to_str().unwrap()];
    let mut vm = ApiVm::start(&flags);
    let mut c = vm.client();
    let (path, _) = disk(dir.path(), "data.img", 16384, 4);
    let r = c.put(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    // 32 requests in flight all along, for longer than the test waits before pausing.
    let args = "console=ttyS0 probe.run=blk-iops probe.count=100000 probe.blk_qd=32";
    let r = c.put(
        "/boot-source",
        json!({"kernel_image_path": probe_path(), "boot_args": args}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put(
        "/drives/data",
        drive_on("Async", "data", &path, false, false),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running
        .wait_for_output("probe: blk-iops randread-start", TIMEOUT);
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let (state, mem) = (dir.path().join("state"), dir.path().join("mem"));
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    let saved = vm.running.stdout();
    vm.running.kill();
    assert!(
        !saved.contains("probe: blk-iops ok"),
        "finished before the pause: {saved}"
    );

    // The clone finishes every pass: a request saved half done would never complete and the
    // probe would time out waiting for it.
    let mut clone = ApiVm::start(&flags);
    let mut c = clone.client();
    let r = c.put(
        "/snapshot/load",
        json!({"snapshot_path": state,
               "mem_backend": {"backend_type": "File", "backend_path": mem},
               "resume_vm": true}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    clone.running.wait_for_output(
        "probe: blk-iops ok ops=100000 kib=4 qd=32",
        Duration::from_secs(300),
    );
    clone.running.kill();
}
