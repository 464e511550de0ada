//! The Linux test guest on virtio devices: its root file system on virtio-blk, a file written
//! to a second drive and flushed, a read-only drive that refuses writes, random bytes from
//! virtio-rng (/dev/hwrng). One boot (~15 s on hosts without VMX/SVM) runs every check.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{kvm_available, linux_guest_dir, TestVm};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(600);
const DATA_MARK: &str = "palisade-linux-data-0123456789";

/// The checks, run as PID 1 from the root drive. Busybox applets by name (the root has only
/// /bin/busybox and /bin/sh); each process costs emulated kernel time on the dev host.
fn init_script() -> String {
    format!(
        r#"#!/bin/sh
export PATH=/bin:/sbin
busybox mount -a
devmem 0xc0000000 8 123 2>/dev/null
echo palisade-guest: ready
if echo {DATA_MARK} | busybox dd of=/dev/vdb bs=512 conv=sync,fsync 2>/dev/null; then
    echo "palisade-result: data-write pass"
else
    echo "palisade-result: data-write fail"
fi
if busybox dd if=/dev/zero of=/dev/vdc bs=512 count=1 conv=fsync 2>/dev/null; then
    echo "palisade-result: ro-write fail accepted"
else
    echo "palisade-result: ro-write pass"
fi
n=$(busybox dd if=/dev/hwrng bs=32 count=1 2>/dev/null | busybox wc -c)
echo "palisade-result: hwrng pass bytes=$n"
busybox reboot -f
"#
    )
}

/// Replaces /sbin/init of a copy of the guest's root file system (e2fsprogs' debugfs).
fn rootfs_with_init(dir: &Path) -> String {
    let rootfs = dir.join("rootfs.ext4");
    std::fs::copy(linux_guest_dir().join("rootfs.ext4"), &rootfs).unwrap();
    let script = dir.join("init");
    std::fs::write(&script, init_script()).unwrap();
    for request in [
        "rm /sbin/init".to_string(),
        format!("write {} /sbin/init", script.display()),
        "sif /sbin/init mode 0100755".to_string(),
    ] {
        let out = Command::new("debugfs")
            .args(["-w", "-R", &request])
            .arg(&rootfs)
            .output()
            .expect("debugfs (e2fsprogs) is needed to prepare the root file system");
        assert!(out.status.success(), "debugfs {request}: {out:?}");
    }
    rootfs.to_str().unwrap().to_string()
}

#[test]
fn linux_runs_from_a_virtio_blk_root_writes_a_drive_and_reads_hwrng() {
    if !kvm_available("linux_runs_from_a_virtio_blk_root_writes_a_drive_and_reads_hwrng") {
        return;
    }
    let guest = linux_guest_dir();
    let boot_args = std::fs::read_to_string(guest.join("boot_args")).expect("boot_args");
    let mut vm = TestVm::new(json!({
        "boot-source": {
            "kernel_image_path": guest.join("vmlinux"),
            "boot_args": boot_args.trim(),
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "entropy": {},
    }));
    let rootfs = rootfs_with_init(vm.dir.path());
    let data = vm.dir.path().join("data.img");
    let ro = vm.dir.path().join("ro.img");
    std::fs::write(&data, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&ro, vec![0x5au8; 1 << 20]).unwrap();
    vm.config["drives"] = json!([
        {"drive_id": "data", "path_on_host": data, "is_root_device": false,
         "is_read_only": false, "cache_type": "Writeback"},
        {"drive_id": "ro", "path_on_host": ro, "is_root_device": false, "is_read_only": true},
        {"drive_id": "rootfs", "path_on_host": rootfs, "is_root_device": true,
         "is_read_only": false},
    ]);
    let run = vm.run(TIMEOUT);
    println!("VMM exited after {:.1} s", run.elapsed.as_secs_f64());
    run.assert_success();
    let result = |name: &str| {
        run.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("palisade-result: {name} ")))
            .unwrap_or_else(|| panic!("no {name} result\n{}\n{}", run.stdout, run.stderr))
            .to_string()
    };
    assert!(
        run.stdout.contains("palisade-guest: ready"),
        "{}",
        run.stdout
    );
    assert_eq!(result("data-write"), "pass");
    assert_eq!(result("ro-write"), "pass");
    assert_eq!(result("hwrng"), "pass bytes=32");
    // Nothing lost: the guest's write is in the host file, padded to a sector.
    let written = std::fs::read(&data).unwrap();
    assert_eq!(
        &written[..DATA_MARK.len() + 1],
        format!("{DATA_MARK}\n").as_bytes()
    );
    assert_eq!(std::fs::read(&ro).unwrap(), vec![0x5au8; 1 << 20]);
}
