//! Snapshots of the Linux test guest: booted once with vsock, two drives and entropy, paused
//! when its agent answered and saved (tests/common/linux.rs, the golden snapshot), then
//! restored three times, each clone a new VMM process with `resume_vm` and its own vsock
//! socket (`vsock_override`). All three run at once and each runs a check in user space
//! through the agent: it reads what the guest wrote before the snapshot, a drive, fresh
//! bytes from /dev/hwrng, and writes a file the other clones never see.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::collections::BTreeSet;

use common::kvm_available;
use common::linux::{golden, LinuxClone, GOLDEN_MARK};
use common::vsock::fields;

/// The clone's check: `golden=... ro=... rng=...`; fails if another clone's file is here.
/// The user-space check each clone runs. The entropy part digests 4 KiB of /dev/hwrng, far
/// more than the guest keeps read ahead (Linux 6.1's virtio-rng driver buffers up to 512
/// bytes fetched before the snapshot, and the hw_random core a few more): those first bytes
/// are the same in every clone, what follows comes from the host after the load.
fn check(n: usize) -> String {
    format!(
        r#"if [ -e /tmp/clone ]; then echo "seen=$(cat /tmp/clone)"; exit 3; fi
echo clone-{n} >/tmp/clone
read -r golden </tmp/golden
ro=$(busybox dd if=/dev/vdb bs=8 count=1 2>/dev/null)
rng=$(busybox head -c 4096 /dev/hwrng | busybox md5sum | busybox cut -c1-32)
echo "golden=$golden ro=$ro rng=$rng""#
    )
}

#[test]
fn three_clones_of_a_booted_linux_guest_each_run_their_own_user_space_check() {
    let test = "three_clones_of_a_booted_linux_guest_each_run_their_own_user_space_check";
    if !kvm_available(test) {
        return;
    }
    let golden = golden();
    let clones: Vec<LinuxClone> = (0..3).map(|_| LinuxClone::start(true)).collect();
    let mut rngs = BTreeSet::new();
    for (n, clone) in clones.iter().enumerate() {
        let t = std::time::Instant::now();
        let out = clone.sh(&check(n));
        println!("check {n}: {:?}", t.elapsed());
        let f = fields(&out);
        assert_eq!(f["golden"], GOLDEN_MARK, "{out}");
        assert_eq!(f["ro"], "ZZZZZZZZ", "{out}");
        assert_eq!(f["rng"].len(), 32, "{out}");
        rngs.insert(f["rng"].clone());
    }
    assert_eq!(rngs.len(), 3, "clones read the same hwrng bytes: {rngs:?}");
    // Each clone still has its own file: three guests, not one.
    for (n, clone) in clones.iter().enumerate() {
        let t = std::time::Instant::now();
        assert_eq!(clone.sh("cat /tmp/clone"), format!("clone-{n}\n"));
        println!("cat {n}: {:?}", t.elapsed());
        let serial = clone.vm.running.stdout();
        assert!(
            !serial.contains("palisade-guest: ready"),
            "clone {n} booted again:\n{serial}"
        );
    }
    println!(
        "golden boot to agent: {:?} (None: booted by an earlier test); loads: {:?}",
        golden.boot,
        clones.iter().map(|c| c.load).collect::<Vec<_>>()
    );
}
