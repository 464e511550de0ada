//! The device nodes the mknod step makes in the jail: the host's numbers, character devices,
//! owned by the jailed uid/gid, mode 0600; /dev/userfaultfd (for snapshot loads with the Uffd
//! memory backend) exactly when the host has one.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::Duration;

use common::{can_jail, probe_bin, run, unique, Sandbox};

const TIMEOUT: Duration = Duration::from_secs(60);

/// (major, minor) of a device number, as glibc's gnu_dev_major/minor split it.
fn split(rdev: u64) -> (u64, u64) {
    (
        ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff),
        (rdev & 0xff) | ((rdev >> 12) & !0xff),
    )
}

#[test]
fn the_jail_gets_the_hosts_userfaultfd_and_kvm_nodes_owned_by_the_jailed_uid_with_mode_0600() {
    let test =
        "the_jail_gets_the_hosts_userfaultfd_and_kvm_nodes_owned_by_the_jailed_uid_with_mode_0600";
    if !can_jail(test) {
        return;
    }
    let sandbox = Sandbox::new("devices");
    let probe = probe_bin();
    let id = unique("devices");
    let root = sandbox.stage_libraries(&probe, &id);
    let r = run(sandbox.jailer(&id, &probe), TIMEOUT);
    r.assert_success();

    let host_uffd = std::fs::read_to_string("/sys/class/misc/userfaultfd/dev").ok();
    let host_uffd = host_uffd.map(|text| {
        let (major, minor) = text.trim().split_once(':').unwrap();
        (major.parse::<u64>().unwrap(), minor.parse::<u64>().unwrap())
    });
    let mut expected = vec![("dev/kvm", Some((10, 232)))];
    expected.push(("dev/userfaultfd", host_uffd));
    for (node, numbers) in expected {
        let path = root.join(node);
        let Some(numbers) = numbers else {
            assert!(
                std::fs::symlink_metadata(&path).is_err(),
                "{node} exists but the host has none"
            );
            continue;
        };
        let meta = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("{node} is missing from the jail: {e}"));
        assert!(meta.file_type().is_char_device(), "{node}: {meta:?}");
        assert_eq!(split(meta.rdev()), numbers, "{node}: device numbers");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (sandbox.uid, sandbox.uid),
            "{node}"
        );
        assert_eq!(
            meta.mode() & 0o7777,
            0o600,
            "{node}: mode {:o}",
            meta.mode()
        );
    }
}
