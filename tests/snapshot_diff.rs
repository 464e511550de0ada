//! Diff snapshots with `track_dirty_pages` (issue 14), each VMM a new process, on the probe's
//! `dirty` scenario: it writes a known pattern to K pages at 32 MiB per round and waits for
//! Ctrl+Alt+Del (sent through the API) before the next round, which first checks the pages
//! still hold the last round's pattern. A Diff taken between two rounds holds about K pages
//! (far below RAM); written onto a copy of the base Full memory file (with the earlier Diff
//! rebased onto it) it restores in a new process whose guest reads its pattern back; a clone
//! loaded with `track_dirty_pages` diffs only what it wrote since the load; a Diff without
//! tracking is refused with Firecracker's message.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::api::ApiClient;
use common::{kvm_available, probe_path, ApiVm};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
const PAGE: u64 = 4096;
/// resources/probe/src/scenarios/dirty.rs: the first page the guest writes.
const BASE: u64 = 32 << 20;
/// Pages the guest writes per round.
const K: u64 = 256;
const MIB: u64 = 1 << 20;
/// Pages a Diff may hold besides the K the guest wrote: its stack, page-table accessed and
/// dirty bits.
const SLACK: u64 = 32;
const FIRECRACKER_DIFF_REFUSAL: &str = "The requested operation is not supported: Diff \
     snapshots are not allowed on uVMs with dirty page tracking disabled.";

/// The probe's `mem`/`dirty` value at `addr` for `seed` (resources/probe/src/scenarios/mem.rs).
fn pattern(addr: u64, seed: u64) -> u64 {
    addr.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ 0x5a5a_c3c3_0f0f_9669
        ^ seed.wrapping_mul(0xd6e8_feb8_6659_fd93)
}

fn configure(c: &mut ApiClient, boot_args: &str, mib: u64, track: bool) {
    let r = c.put(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": mib, "track_dirty_pages": track}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put(
        "/boot-source",
        json!({"kernel_image_path": probe_path(),
               "boot_args": format!("console=ttyS0 {boot_args}")}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
}

fn snapshot_dir_flags(dir: &Path) -> Vec<String> {
    vec!["--snapshot-dir".into(), dir.to_string_lossy().into_owned()]
}

fn args(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

fn set_state(c: &mut ApiClient, state: &str) {
    let r = c.patch("/vm", json!({ "state": state }));
    assert_eq!(r.status, 204, "{}", r.body);
}

fn create(c: &mut ApiClient, kind: &str, state: &Path, mem: &Path) -> common::api::ApiResponse {
    c.put(
        "/snapshot/create",
        json!({"snapshot_type": kind, "snapshot_path": state, "mem_file_path": mem}),
    )
}

/// Sends Ctrl+Alt+Del: the guest checks its last round and writes the next one.
fn next_round(vm: &mut ApiVm, c: &mut ApiClient, round: u64) {
    let r = c.put("/actions", json!({"action_type": "SendCtrlAltDel"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.wait_for_output(
        &format!("probe: dirty ok round={round} pages={K} check=ok\n"),
        TIMEOUT,
    );
}

/// The (offset, length) data segments of a file (SEEK_DATA / SEEK_HOLE).
fn data_segments(path: &Path) -> Vec<(u64, u64)> {
    let file = File::open(path).unwrap();
    let size = file.metadata().unwrap().len() as i64;
    let (fd, mut offset, mut segments) = (file.as_raw_fd(), 0i64, Vec::new());
    while offset < size {
        // SAFETY: lseek on a file this function owns; it changes only the file position.
        let data = unsafe { libc::lseek(fd, offset, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data past offset.
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        assert!(hole > data, "SEEK_HOLE after {data} answered {hole}");
        segments.push((data as u64, (hole - data) as u64));
        offset = hole;
    }
    segments
}

fn data_bytes(path: &Path) -> u64 {
    data_segments(path).iter().map(|(_, len)| len).sum()
}

/// Asserts that the file holds round `round`'s pattern over the K pages.
fn assert_pattern(path: &Path, round: u64) {
    let file = File::open(path).unwrap();
    let mut buf = vec![0u8; (K * PAGE) as usize];
    file.read_exact_at(&mut buf, BASE).unwrap();
    for (i, word) in buf.chunks_exact(8).enumerate() {
        let addr = BASE + i as u64 * 8;
        let found = u64::from_le_bytes(word.try_into().unwrap());
        assert_eq!(found, pattern(addr, round), "{path:?} at {addr:#x}");
    }
}

/// Writes the data segments of `diff` onto `base` (what Firecracker's snapshot-editor
/// `rebase` does).
fn rebase(diff: &Path, base: &Path) {
    let from = File::open(diff).unwrap();
    let to = std::fs::OpenOptions::new().write(true).open(base).unwrap();
    for (offset, len) in data_segments(diff) {
        let mut buf = vec![0u8; len as usize];
        from.read_exact_at(&mut buf, offset).unwrap();
        to.write_all_at(&buf, offset).unwrap();
    }
}

fn copy_0600(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn load_body(state: &Path, mem: &Path, resume: bool, track: bool) -> serde_json::Value {
    json!({"snapshot_path": state,
           "mem_backend": {"backend_type": "File", "backend_path": mem},
           "track_dirty_pages": track,
           "resume_vm": resume})
}

#[test]
fn diffs_hold_the_written_pages_and_onto_the_base_copy_restore_the_pattern_in_a_new_process() {
    let test =
        "diffs_hold_the_written_pages_and_onto_the_base_copy_restore_the_pattern_in_a_new_process";
    if !kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let flags = snapshot_dir_flags(dir.path());
    let mut vm = ApiVm::start(&args(&flags));
    let mut c = vm.client();
    configure(
        &mut c,
        &format!("probe.run=dirty probe.pages={K}"),
        128,
        true,
    );
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.wait_for_output(
        &format!("probe: dirty ok round=1 pages={K} check=none\n"),
        TIMEOUT,
    );

    // The base: a Full snapshot after round 1.
    set_state(&mut c, "Paused");
    let r = create(&mut c, "Full", &at("state0"), &at("mem0"));
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    assert_pattern(&at("mem0"), 1);

    // Round 2, then a Diff into a new file: a sparse file of about K pages.
    set_state(&mut c, "Resumed");
    next_round(&mut vm, &mut c, 2);
    set_state(&mut c, "Paused");
    let r = create(&mut c, "Diff", &at("state1"), &at("diff1"));
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    assert_eq!(std::fs::metadata(at("diff1")).unwrap().len(), 128 * MIB);
    let data = data_bytes(&at("diff1"));
    println!(
        "Diff after {K} written pages: {} pages of data in a {} MiB file",
        data / PAGE,
        128
    );
    assert!(
        (K * PAGE..=(K + SLACK) * PAGE).contains(&data),
        "the Diff holds {} pages, the guest wrote {K}",
        data / PAGE
    );
    assert_pattern(&at("diff1"), 2);

    // Round 3, then a Diff in place onto a copy of the base brought up to date with the
    // first Diff: the full image, its SHA-256 bound into the state file.
    set_state(&mut c, "Resumed");
    next_round(&mut vm, &mut c, 3);
    set_state(&mut c, "Paused");
    copy_0600(&at("mem0"), &at("merged"));
    rebase(&at("diff1"), &at("merged"));
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_type": "Diff", "snapshot_path": at("state2"),
               "mem_file_path": at("merged"), "hash_memory": true}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    assert_pattern(&at("merged"), 3);
    vm.running
        .wait_for_log("Snapshot created (Diff", Duration::from_secs(10));
    drop(c);
    vm.running.kill();

    // The hash covers the resulting file: the base copy without the Diff is refused.
    let mut clone = ApiVm::start(&args(&flags));
    let mut c = clone.client();
    let r = c.put(
        "/snapshot/load",
        load_body(&at("state2"), &at("mem0"), true, true),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("refused"), "{}", r.fault());
    assert_eq!(c.get("/").json()["state"], "Not started");

    // The merged file restores; with track_dirty_pages the clone starts all clean.
    let r = c.put(
        "/snapshot/load",
        load_body(&at("state2"), &at("merged"), false, true),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let config = c.get("/vm/config").json();
    assert_eq!(config["machine-config"]["track_dirty_pages"], true);
    let r = create(&mut c, "Diff", &at("state3"), &at("diff3"));
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let untouched = data_bytes(&at("diff3"));
    println!("Diff of a clone that never ran: {} pages", untouched / PAGE);
    assert!(
        untouched <= SLACK * PAGE,
        "a clone that never ran diffs {} pages",
        untouched / PAGE
    );

    // The guest reads round 3 back from the restored memory, then writes round 4: the
    // clone's Diff holds only those writes.
    set_state(&mut c, "Resumed");
    next_round(&mut clone, &mut c, 4);
    let out = clone.running.stdout();
    assert!(!out.contains("dirty fail"), "{out}");
    set_state(&mut c, "Paused");
    let r = create(&mut c, "Diff", &at("state4"), &at("diff4"));
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let data = data_bytes(&at("diff4"));
    println!(
        "Diff of a clone that wrote {K} pages: {} pages",
        data / PAGE
    );
    assert!(
        (K * PAGE..=(K + SLACK) * PAGE).contains(&data),
        "the clone's Diff holds {} pages, it wrote {K}",
        data / PAGE
    );
    assert_pattern(&at("diff4"), 4);
    clone.running.kill();
}

#[test]
fn a_diff_without_dirty_page_tracking_is_refused_with_firecrackers_message() {
    let test = "a_diff_without_dirty_page_tracking_is_refused_with_firecrackers_message";
    if !kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let flags = snapshot_dir_flags(dir.path());
    let mut vm = ApiVm::start(&args(&flags));
    let mut c = vm.client();
    configure(&mut c, "probe.run=dirty probe.pages=1", 64, false);
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running
        .wait_for_output("probe: dirty ok round=1 pages=1", TIMEOUT);
    set_state(&mut c, "Paused");
    let r = create(&mut c, "Diff", &at("state"), &at("diff"));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.fault(), FIRECRACKER_DIFF_REFUSAL);
    assert!(!at("diff").exists() && !at("state").exists());
    let r = create(&mut c, "Full", &at("state"), &at("mem"));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.kill();

    // A clone loaded without track_dirty_pages is not tracked either.
    let clone = ApiVm::start(&args(&flags));
    let mut c = clone.client();
    let r = c.put(
        "/snapshot/load",
        load_body(&at("state"), &at("mem"), false, false),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let r = create(&mut c, "Diff", &at("state2"), &at("diff2"));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.fault(), FIRECRACKER_DIFF_REFUSAL);
    assert!(!at("diff2").exists());
}

#[test]
fn the_deprecated_enable_diff_snapshots_tracks_a_clone_and_a_refused_diff_keeps_its_pages() {
    let test =
        "the_deprecated_enable_diff_snapshots_tracks_a_clone_and_a_refused_diff_keeps_its_pages";
    if !kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let flags = snapshot_dir_flags(dir.path());
    let mut vm = ApiVm::start(&args(&flags));
    let mut c = vm.client();
    configure(&mut c, "probe.run=dirty probe.pages=16", 64, false);
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running
        .wait_for_output("probe: dirty ok round=1 pages=16", TIMEOUT);
    set_state(&mut c, "Paused");
    let r = create(&mut c, "Full", &at("state"), &at("mem"));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.kill();

    let mut clone = ApiVm::start(&args(&flags));
    let mut c = clone.client();
    let r = c.put(
        "/snapshot/load",
        json!({"snapshot_path": at("state"), "mem_file_path": at("mem"),
               "enable_diff_snapshots": true, "resume_vm": true}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let r = c.put("/actions", json!({"action_type": "SendCtrlAltDel"}));
    assert_eq!(r.status, 204, "{}", r.body);
    clone
        .running
        .wait_for_output("probe: dirty ok round=2 pages=16 check=ok\n", TIMEOUT);
    set_state(&mut c, "Paused");
    // A refused Diff (onto a file of another size) keeps the log: the next one has round 2.
    std::fs::write(at("short"), [0u8; 4096]).unwrap();
    let only_owner = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(at("short"), only_owner).unwrap();
    let r = create(&mut c, "Diff", &at("state2"), &at("short"));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(std::fs::metadata(at("short")).unwrap().len(), 4096);
    copy_0600(&at("mem"), &at("merged"));
    let r = create(&mut c, "Diff", &at("state2"), &at("merged"));
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let file = File::open(at("merged")).unwrap();
    let mut word = [0u8; 8];
    file.read_exact_at(&mut word, BASE).unwrap();
    assert_eq!(u64::from_le_bytes(word), pattern(BASE, 2));
}

#[test]
fn a_diff_of_a_booted_vm_into_a_new_file_restores_without_a_base() {
    let test = "a_diff_of_a_booted_vm_into_a_new_file_restores_without_a_base";
    if !kvm_available(test) {
        return;
    }
    // Since boot, the log holds every page the VMM loaded (kernel, boot data: its own bitmap)
    // and every page the guest wrote (KVM's): the holes are pages never written, zeros.
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let flags = snapshot_dir_flags(dir.path());
    let mut vm = ApiVm::start(&args(&flags));
    let mut c = vm.client();
    configure(&mut c, "probe.run=dirty probe.pages=16", 64, true);
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running
        .wait_for_output("probe: dirty ok round=1 pages=16 check=none\n", TIMEOUT);
    set_state(&mut c, "Paused");
    let r = create(&mut c, "Diff", &at("state"), &at("diff"));
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    vm.running.kill();
    let data = data_bytes(&at("diff"));
    println!("Diff of a booted 64 MiB probe: {} pages", data / PAGE);
    assert!(data < 16 * MIB, "{} pages", data / PAGE);

    let mut clone = ApiVm::start(&args(&flags));
    let mut c = clone.client();
    let r = c.put(
        "/snapshot/load",
        load_body(&at("state"), &at("diff"), true, false),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    let r = c.put("/actions", json!({"action_type": "SendCtrlAltDel"}));
    assert_eq!(r.status, 204, "{}", r.body);
    clone
        .running
        .wait_for_output("probe: dirty ok round=2 pages=16 check=ok\n", TIMEOUT);
}

#[test]
fn a_diff_since_boot_equals_a_full_snapshot_also_where_devices_wrote_guest_memory() {
    let test = "a_diff_since_boot_equals_a_full_snapshot_also_where_devices_wrote_guest_memory";
    if !kvm_available(test) {
        return;
    }
    // The VMM writes guest memory at boot (kernel, zero page, MP table) and for its devices
    // (virtio-rng buffers; virtio-blk reads of the whole disk; both used rings). KVM's log
    // sees none of it: every such page must come from the VMM's bitmap. A Diff since boot
    // and a Full taken right after it, in the same pause, must then be the same bytes (the
    // Diff's holes are pages never written: zeros in the Full).
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let disk = at("disk.img");
    let content: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i * 7 % 251) as u8 | 1)
        .collect();
    std::fs::write(&disk, &content).unwrap();
    let flags = snapshot_dir_flags(dir.path());
    let mut vm = ApiVm::start(&args(&flags));
    let mut c = vm.client();
    configure(&mut c, "probe.run=rng,blk,dirty probe.pages=4", 64, true);
    let r = c.put(
        "/drives/data",
        json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false,
               "is_read_only": false}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/entropy", json!({}));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running
        .wait_for_output("probe: dirty ok round=1 pages=4 check=none\n", TIMEOUT);
    let out = vm.running.stdout();
    assert!(
        out.contains("probe: rng ok") && out.contains("probe: blk ok"),
        "{out}"
    );
    set_state(&mut c, "Paused");
    let r = create(&mut c, "Diff", &at("state-diff"), &at("diff"));
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    let r = create(&mut c, "Full", &at("state-full"), &at("full"));
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    vm.running.kill();

    let (diff, full) = (
        std::fs::read(at("diff")).unwrap(),
        std::fs::read(at("full")).unwrap(),
    );
    assert_eq!(diff.len(), full.len());
    let missing: Vec<usize> = diff
        .chunks(PAGE as usize)
        .zip(full.chunks(PAGE as usize))
        .enumerate()
        .filter(|(_, (d, f))| d != f)
        .map(|(page, _)| page)
        .collect();
    assert!(
        missing.is_empty(),
        "{} written pages are not in the Diff, first at {:#x}",
        missing.len(),
        missing[0] as u64 * PAGE
    );
    // The disk's content is in guest memory (the blk read), so it was in the Diff.
    let needle = &content[4096..4096 + 64];
    let in_data = data_segments(&at("diff")).into_iter().any(|(offset, len)| {
        diff[offset as usize..(offset + len) as usize]
            .windows(needle.len())
            .any(|w| w == needle)
    });
    assert!(in_data, "the blk read is not in the Diff");
    println!(
        "Diff since boot with rng and blk: {} pages of data",
        data_bytes(&at("diff")) / PAGE
    );
}

#[test]
fn a_diff_onto_a_memory_file_another_running_clone_maps_is_refused_and_the_clone_keeps_its_memory()
{
    let test = "a_diff_onto_a_memory_file_another_running_clone_maps_is_refused_and_the_clone_keeps_its_memory";
    if !kvm_available(test) {
        return;
    }
    // A Diff writes into the file in place; a clone loaded from that file maps it private,
    // so every page it has not touched yet would read the other clone's memory.
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let flags = snapshot_dir_flags(dir.path());
    let mut vm = ApiVm::start(&args(&flags));
    let mut c = vm.client();
    configure(
        &mut c,
        &format!("probe.run=dirty probe.pages={K}"),
        64,
        false,
    );
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.wait_for_output(
        &format!("probe: dirty ok round=1 pages={K} check=none\n"),
        TIMEOUT,
    );
    set_state(&mut c, "Paused");
    let r = create(&mut c, "Full", &at("state"), &at("mem"));
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    drop(c);
    vm.running.kill();
    let original = std::fs::read(at("mem")).unwrap();

    // Clone A runs from the file and has not touched the K pages since the load.
    let mut a = ApiVm::start(&args(&flags));
    let mut ca = a.client();
    let r = ca.put(
        "/snapshot/load",
        load_body(&at("state"), &at("mem"), true, false),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, a.running.stderr());

    // Clone B, tracked, writes round 2 over the K pages and diffs onto the same file.
    let mut b = ApiVm::start(&args(&flags));
    let mut cb = b.client();
    let r = cb.put(
        "/snapshot/load",
        load_body(&at("state"), &at("mem"), true, true),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, b.running.stderr());
    next_round(&mut b, &mut cb, 2);
    set_state(&mut cb, "Paused");
    let r = create(&mut cb, "Diff", &at("state-b"), &at("mem"));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.fault().contains("is mapped by another VM"),
        "{}",
        r.fault()
    );
    assert!(
        std::fs::read(at("mem")).unwrap() == original,
        "the file changed"
    );
    assert!(!at("state-b").exists());

    // Onto a copy the Diff is written (the refused one kept its log: it holds round 2).
    copy_0600(&at("mem"), &at("copy"));
    let r = create(&mut cb, "Diff", &at("state-b"), &at("copy"));
    assert_eq!(r.status, 204, "{}\n{}", r.body, b.running.stderr());
    assert_pattern(&at("copy"), 2);

    // A still reads its own round 1 from the untouched pages.
    next_round(&mut a, &mut ca, 2);
    let out = a.running.stdout();
    assert!(!out.contains("dirty fail"), "{out}");
    drop(ca);
    a.running.kill();

    // With A gone, B is the file's only mapper: its Diff onto the file it was loaded from
    // is written, and B keeps running on its memory.
    set_state(&mut cb, "Resumed");
    next_round(&mut b, &mut cb, 3);
    set_state(&mut cb, "Paused");
    let r = create(&mut cb, "Diff", &at("state-b"), &at("mem"));
    assert_eq!(r.status, 204, "{}\n{}", r.body, b.running.stderr());
    assert_pattern(&at("mem"), 3);
    set_state(&mut cb, "Resumed");
    next_round(&mut b, &mut cb, 4);
    let out = b.running.stdout();
    assert!(!out.contains("dirty fail"), "{out}");
    b.running.kill();
}
