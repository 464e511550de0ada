//! A real Linux kernel (the slim test guest from resources/guest) boots under Palisade to
//! user space, runs in-guest checks and powers off. Slow on hosts without VMX/SVM (the
//! guest kernel runs emulated, ~13 s per boot on the dev host): generous timeouts, few
//! boots, each running all the checks it can.
//!
//! The guest's init (resources/guest/init) runs the checks named by `palisade.test=a,b`
//! on the command line and prints `palisade-result: NAME pass|fail DETAIL` for each.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use common::{kvm_available, linux_guest_dir, GuestRun, TestVm};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(600);
const MEM_MIB: u64 = 128;

/// Where the guest's root file system comes from.
#[derive(Clone, Copy, Debug)]
enum Root {
    /// The build's initramfs (`initrd_path`).
    Initramfs,
    /// A copy of the build's ext4 image as the root drive (virtio-blk, /dev/vda, read-write).
    Ext4Drive,
}

/// Boots `kernel` from the guest build with `root` and runs `checks` in the guest.
fn boot_linux(kernel: &str, vcpus: u8, root: Root, checks: &str) -> GuestRun {
    let dir = linux_guest_dir();
    let boot_args = std::fs::read_to_string(dir.join("boot_args")).expect("boot_args");
    let mut vm = TestVm::new(json!({
        "boot-source": {
            "kernel_image_path": dir.join(kernel),
            "boot_args": format!("{} palisade.test={checks}", boot_args.trim()),
        },
        "machine-config": {"vcpu_count": vcpus, "mem_size_mib": MEM_MIB},
    }));
    match root {
        Root::Initramfs => {
            vm.config["boot-source"]["initrd_path"] = json!(dir.join("initramfs.cpio"))
        }
        Root::Ext4Drive => {
            let rootfs = vm.dir.path().join("rootfs.ext4");
            std::fs::copy(dir.join("rootfs.ext4"), &rootfs).unwrap();
            vm.config["drives"] = json!([{"drive_id": "rootfs", "path_on_host": rootfs,
                "is_root_device": true, "is_read_only": false}]);
        }
    }
    let run = vm.run(TIMEOUT);
    println!(
        "{kernel}, {vcpus} vCPU(s), {root:?}: VMM exited after {:.1} s; {}",
        run.elapsed.as_secs_f64(),
        run.stderr
            .lines()
            .find(|l| l.contains("Guest-boot-time"))
            .unwrap_or("no boot time logged")
    );
    run
}

/// `key=value` from a check's detail.
fn field<'a>(detail: &'a str, key: &str) -> &'a str {
    detail
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {detail:?}"))
}

/// User space was reached, the boot timer fired, all checks ran and the guest powered
/// off through the i8042 with the VMM exiting 0.
fn assert_booted_and_powered_off(run: &GuestRun) {
    run.assert_success();
    assert!(
        run.stdout.contains("palisade-guest: ready"),
        "the guest never reached its init:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stderr.contains("Guest-boot-time ="),
        "init's boot-timer write was not seen:\n{}",
        run.stderr
    );
    assert!(
        run.stdout.contains("palisade-guest: done"),
        "the guest's check runner did not finish:\n{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("reset through the i8042"),
        "the guest did not power off through the i8042:\n{}",
        run.stderr
    );
}

/// The `info` check: the guest sees `vcpus` CPUs, the configured memory less the
/// kernel's own reservations, and the 6.1 kernel of the guest build.
fn assert_info(run: &GuestRun, vcpus: u32) {
    let detail = run.assert_guest_pass("info");
    let cpus: u32 = field(detail, "cpus").parse().unwrap();
    assert_eq!(cpus, vcpus, "{detail}");
    // MemTotal: all RAM minus what the kernel keeps (its image, memmap, reserved low
    // memory): ~113 MiB of 128 here. At least 3/4 of the configured size, never more.
    let mem_kib: u64 = field(detail, "mem_kib").parse().unwrap();
    assert!(
        (MEM_MIB * 1024 * 3 / 4..MEM_MIB * 1024).contains(&mem_kib),
        "MemTotal {mem_kib} KiB for {MEM_MIB} MiB of guest memory: {detail}"
    );
    let kernel = field(detail, "kernel");
    assert!(kernel.starts_with("6.1."), "{detail}");
}

#[test]
fn linux_vmlinux_boots_through_pvh_on_one_vcpu_and_runs_info() {
    if !kvm_available("linux_vmlinux_boots_through_pvh_on_one_vcpu_and_runs_info") {
        return;
    }
    let run = boot_linux("vmlinux", 1, Root::Initramfs, "info,no-such-check");
    assert!(run.stderr.contains("(Pvh)"), "{}", run.stderr);
    assert_booted_and_powered_off(&run);
    assert_info(&run, 1);
    // The runner reports an unknown check as failed and goes on.
    assert_eq!(
        run.guest_result("no-such-check"),
        Some((false, "no such check"))
    );
}

/// bzImage through the 64-bit boot protocol, on two vCPUs: AP bring-up through the MP
/// table and the in-kernel local APIC (the guest build keeps off KVM's PV IPIs), its root
/// file system the ext4 image on a virtio-blk root drive (the VMM's `root=/dev/vda rw`).
#[test]
fn linux_bzimage_boots_on_two_vcpus_from_an_ext4_root_drive_and_runs_info() {
    if !kvm_available("linux_bzimage_boots_on_two_vcpus_from_an_ext4_root_drive_and_runs_info") {
        return;
    }
    let run = boot_linux("bzImage", 2, Root::Ext4Drive, "info");
    assert!(run.stderr.contains("(Linux64)"), "{}", run.stderr);
    assert_booted_and_powered_off(&run);
    assert_info(&run, 2);
}
