//! Guest memory is private to its VMM, between guard pages, never dumped or merged, and the
//! VMM process is not dumpable.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{kvm_available, palisade_bin, probe_path, RunningVm, TestVm};

const TIMEOUT: Duration = Duration::from_secs(60);
const MEM_MIB: u64 = 64;

/// One line of /proc/PID/maps.
#[derive(Debug, Clone)]
struct Mapping {
    start: u64,
    end: u64,
    perms: String,
}

fn mappings(pid: u32) -> Vec<Mapping> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            let (a, b) = f.next().unwrap().split_once('-').unwrap();
            Mapping {
                start: u64::from_str_radix(a, 16).unwrap(),
                end: u64::from_str_radix(b, 16).unwrap(),
                perms: f.next().unwrap().to_string(),
            }
        })
        .collect()
}

/// The guest RAM mapping of a VMM with `MEM_MIB` of RAM, and its neighbours.
fn guest_region(pid: u32) -> (Mapping, Mapping, Mapping) {
    let maps = mappings(pid);
    let i = maps
        .iter()
        .position(|m| m.end - m.start == MEM_MIB << 20 && m.perms == "rw-p")
        .unwrap_or_else(|| panic!("no {MEM_MIB} MiB rw-p mapping in {maps:#?}"));
    (maps[i - 1].clone(), maps[i].clone(), maps[i + 1].clone())
}

fn vm_flags(pid: u32, start: u64) -> Vec<String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let header = format!("{start:x}-");
    let block = smaps.split_once(&header).unwrap().1;
    let line = block.lines().find(|l| l.starts_with("VmFlags:")).unwrap();
    line["VmFlags:".len()..]
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn idle_probe() -> RunningVm {
    let vm = TestVm::probe("idle", 1, MEM_MIB as usize);
    let mut running = vm.spawn();
    running.wait_for_output("probe: idle ok", TIMEOUT);
    std::mem::forget(vm); // Keep its directory while the VMM runs.
    running
}

#[test]
fn guest_ram_is_guarded_undumpable_and_unmergeable() {
    if !kvm_available("guest_ram_is_guarded_undumpable_and_unmergeable") {
        return;
    }
    let running = idle_probe();
    let pid = running.child.id();
    let (before, region, after) = guest_region(pid);
    assert_eq!(before.end, region.start, "no guard right below guest RAM");
    assert_eq!(after.start, region.end, "no guard right above guest RAM");
    assert_eq!(before.perms, "---p");
    assert_eq!(after.perms, "---p");
    let flags = vm_flags(pid, region.start);
    assert!(
        flags.contains(&"dd".to_string()),
        "not excluded from core dumps: {flags:?}"
    );
    assert!(
        flags.contains(&"dc".to_string()),
        "inherited by children: {flags:?}"
    );
    assert!(
        !flags.contains(&"mg".to_string()),
        "mergeable by KSM: {flags:?}"
    );
    assert!(!flags.contains(&"sh".to_string()), "shared: {flags:?}");
    println!("guest RAM VmFlags: {}", flags.join(" "));
    running.kill();
}

#[test]
fn the_vmm_process_is_not_dumpable() {
    if !kvm_available("the_vmm_process_is_not_dumpable") {
        return;
    }
    // Run the VMM as an unprivileged uid: a dumpable process's /proc entries belong to its
    // uid, a non-dumpable one's to root, so another process of that uid cannot read them.
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let kernel = dir.path().join("probe.elf");
    std::fs::copy(probe_path(), &kernel).unwrap();
    let config = dir.path().join("vm.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": "probe.run=idle"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": MEM_MIB},
        })
        .to_string(),
    )
    .unwrap();
    let kvm = dir.path().join("kvm");
    let script = format!(
        "mknod {kvm} c 10 232 && chown 65534:65534 {kvm} && mount --bind {kvm} /dev/kvm && \
         exec setpriv --reuid=65534 --regid=65534 --clear-groups {bin} --no-api --config-file {config}",
        kvm = kvm.display(),
        bin = palisade_bin(),
        config = config.display()
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("probe: idle ok") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "the VMM ended: {:?}", child.wait_with_output());
        seen.extend_from_slice(&buf[..n]);
    }
    let pid = child.id();
    use std::os::unix::fs::MetadataExt;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("Uid:\t65534"), "{status}");
    let owner = std::fs::metadata(format!("/proc/{pid}/mem")).unwrap().uid();
    assert_eq!(
        owner, 0,
        "/proc/PID/mem belongs to the VMM's uid: it is dumpable"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The probe's pattern (resources/probe/src/scenarios/mem.rs).
fn pattern(addr: u64, seed: u64) -> u64 {
    addr.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ 0x5a5a_c3c3_0f0f_9669
        ^ seed.wrapping_mul(0xd6e8_feb8_6659_fd93)
}

/// Counts the words of guest RAM (above 1 MiB) holding `seed`'s pattern.
fn words_with_pattern(pid: u32, region: &Mapping, seed: u64) -> u64 {
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut count = 0;
    let mut gpa = 1u64 << 20;
    while gpa < MEM_MIB << 20 {
        mem.seek(SeekFrom::Start(region.start + gpa)).unwrap();
        mem.read_exact(&mut buf).unwrap();
        for (i, word) in buf.chunks_exact(8).enumerate() {
            let value = u64::from_le_bytes(word.try_into().unwrap());
            if value == pattern(gpa + 8 * i as u64, seed) {
                count += 1;
            }
        }
        gpa += 1 << 20;
    }
    count
}

#[test]
fn two_guests_never_see_each_others_memory() {
    if !kvm_available("two_guests_never_see_each_others_memory") {
        return;
    }
    let seeds = [1111u64, 2222];
    let vms: Vec<_> = seeds
        .iter()
        .map(|seed| {
            let mut vm = TestVm::probe("pattern", 1, MEM_MIB as usize);
            vm.config["boot-source"]["boot_args"] =
                format!("probe.run=pattern probe.seed={seed}").into();
            let running = vm.spawn();
            (vm, running)
        })
        .collect();
    let mut running: Vec<RunningVm> = Vec::new();
    for (vm, mut r) in vms {
        // The whole result line (a failing pattern times out with the output shown).
        r.wait_for_output("probe: pattern ok", TIMEOUT);
        std::mem::forget(vm);
        running.push(r);
    }
    for (i, r) in running.iter().enumerate() {
        let pid = r.child.id();
        let (_, region, _) = guest_region(pid);
        let own = words_with_pattern(pid, &region, seeds[i]);
        let other = words_with_pattern(pid, &region, seeds[1 - i]);
        assert!(
            own > (MEM_MIB - 2) * (1 << 17),
            "guest {i} lost its pattern: {own} words"
        );
        assert_eq!(
            other,
            0,
            "guest {i}'s memory holds guest {}'s pattern",
            1 - i
        );
    }
    for r in running {
        r.kill();
    }
}
