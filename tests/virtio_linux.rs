//! The Linux test guest on virtio devices, restored from the booted golden snapshot
//! (tests/common/linux.rs: no boot per test) with its own copy of the `data` drive: a file
//! written to that drive and flushed reaches the copy, a read-only drive refuses writes,
//! /dev/hwrng gives random bytes (virtio-rng), and an ext4 file system on a virtio-blk drive
//! mounts and reads. (Booting from an ext4 root on virtio-blk: tests/boot_linux.rs.)

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use common::kvm_available;
use common::linux::{LinuxClone, DRIVE_BYTES};
use common::vsock::fields;

const DATA_MARK: &str = "palisade-linux-data-0123456789";

/// The checks, one EXEC through the agent (busybox applets by name: each process costs
/// emulated kernel time on the dev host). vda: data, vdb: ro, vdc: the ext4 image (mounted
/// on the empty /root: the initramfs has no /mnt).
fn checks() -> String {
    format!(
        r#"if echo {DATA_MARK} | busybox dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null; then
    echo data-write=pass
else
    echo data-write=fail
fi
if busybox dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null; then
    echo ro-write=accepted
else
    echo ro-write=pass
fi
echo hwrng=$(busybox dd if=/dev/hwrng bs=32 count=1 2>/dev/null | busybox wc -c)
if busybox mount -t ext4 -o ro /dev/vdc /root; then
    read -r first </root/sbin/init
    echo "ext4=$first"
else
    echo ext4=fail
fi
"#
    )
}

#[test]
fn a_restored_linux_guest_writes_its_own_drive_is_refused_a_read_only_one_and_reads_hwrng() {
    let test =
        "a_restored_linux_guest_writes_its_own_drive_is_refused_a_read_only_one_and_reads_hwrng";
    if !kvm_available(test) {
        return;
    }
    // Paused until the data drive is the clone's own: the golden file stays as it was.
    let clone = LinuxClone::start(false);
    let data = clone.own_data_drive();
    clone.resume();
    let out = clone.sh(&checks());
    let f = fields(&out);
    assert_eq!(f["data-write"], "pass", "{out}");
    assert_eq!(f["ro-write"], "pass", "{out}");
    assert_eq!(f["hwrng"], "32", "{out}");
    assert_eq!(out.lines().last(), Some("ext4=#!/bin/sh"), "{out}");
    // Nothing lost: the guest's write is in the clone's file, padded to a sector.
    let written = std::fs::read(&data).unwrap();
    assert_eq!(written.len(), DRIVE_BYTES);
    assert_eq!(
        &written[..DATA_MARK.len() + 1],
        format!("{DATA_MARK}\n").as_bytes()
    );
    assert!(written[DATA_MARK.len() + 1..].iter().all(|&b| b == 0));
    let golden = std::fs::read(&common::linux::golden().data).unwrap();
    assert!(golden.iter().all(|&b| b == 0), "the golden drive changed");
}
