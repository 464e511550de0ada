//! Attacks on the paths the jailer opens as root in a directory the tenant can write: a hard
//! link, a FIFO or a symbolic link planted where the pid file or the exec file's copy goes,
//! and a symbolic link in place of a directory of the chroot path. Each start is refused at
//! once with one clear line, and the host file the plant points at is untouched.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{assert_refused, can_jail, probe_bin, run, unique, Sandbox};

/// A refusal must come at once; far below this deadline (a blocked open never returns).
const DEADLINE: Duration = Duration::from_secs(10);

/// A root-owned host file outside the jail, with known content and mode.
fn host_file(sandbox: &Sandbox) -> PathBuf {
    let path = sandbox.base.join(unique("host-file"));
    std::fs::write(&path, "host secret\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn assert_host_file_untouched(path: &Path) {
    assert_eq!(std::fs::read_to_string(path).unwrap(), "host secret\n");
    let meta = std::fs::metadata(path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(meta.mode() & 0o7777, 0o600);
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
}

/// Starts the probe in a jail whose `name` (relative to root) was planted by `plant`; the
/// start must be refused at the jail dir step, fast, naming `reason`.
fn refused_with_plant(tag: &str, name: &str, reason: &str, plant: impl FnOnce(&Path)) {
    let sandbox = Sandbox::new(tag);
    let probe = probe_bin();
    let id = unique(tag);
    let root = sandbox.root(&probe, &id);
    std::fs::create_dir_all(&root).unwrap();
    plant(&root.join(name));
    let mut cmd = sandbox.jailer(&id, &probe);
    cmd.args(["--cgroup", "pids.max=8"]);
    let started = Instant::now();
    let r = run(cmd, DEADLINE);
    assert_refused(&r, "jail dir", reason);
    assert!(
        r.stderr.contains(name),
        "the line names the path: {}",
        r.stderr
    );
    assert!(started.elapsed() < DEADLINE / 2, "{:?}", started.elapsed());
    assert!(sandbox.cgroup_dirs().is_empty());
}

#[test]
fn a_hard_link_at_the_pid_file_path_is_refused_and_the_host_file_untouched() {
    if !can_jail("a_hard_link_at_the_pid_file_path_is_refused_and_the_host_file_untouched") {
        return;
    }
    let sandbox = Sandbox::new("hlpid");
    let target = host_file(&sandbox);
    refused_with_plant("hlpid", "jail-probe.pid", "hard links", |p| {
        std::fs::hard_link(&target, p).unwrap()
    });
    assert_host_file_untouched(&target);
}

#[test]
fn a_hard_link_at_the_exec_copy_path_is_refused_and_the_host_file_untouched() {
    if !can_jail("a_hard_link_at_the_exec_copy_path_is_refused_and_the_host_file_untouched") {
        return;
    }
    let sandbox = Sandbox::new("hlexec");
    let target = host_file(&sandbox);
    refused_with_plant("hlexec", "jail-probe", "hard links", |p| {
        std::fs::hard_link(&target, p).unwrap()
    });
    assert_host_file_untouched(&target);
}

#[test]
fn a_fifo_at_the_pid_file_path_fails_fast_without_blocking() {
    if !can_jail("a_fifo_at_the_pid_file_path_fails_fast_without_blocking") {
        return;
    }
    refused_with_plant("fifopid", "jail-probe.pid", "a FIFO", mkfifo);
}

#[test]
fn a_fifo_at_the_exec_copy_path_fails_fast_without_blocking() {
    if !can_jail("a_fifo_at_the_exec_copy_path_fails_fast_without_blocking") {
        return;
    }
    refused_with_plant("fifoexec", "jail-probe", "a FIFO", mkfifo);
}

#[test]
fn a_symlink_at_the_pid_file_or_exec_copy_path_is_refused() {
    if !can_jail("a_symlink_at_the_pid_file_or_exec_copy_path_is_refused") {
        return;
    }
    for name in ["jail-probe.pid", "jail-probe"] {
        let sandbox = Sandbox::new("slfile");
        let target = host_file(&sandbox);
        refused_with_plant("slfile", name, "symbolic link", |p| {
            std::os::unix::fs::symlink(&target, p).unwrap()
        });
        assert_host_file_untouched(&target);
    }
}

#[test]
fn a_symlink_in_place_of_a_directory_of_the_chroot_path_is_refused_and_nothing_behind_it_touched() {
    if !can_jail(
        "a_symlink_in_place_of_a_directory_of_the_chroot_path_is_refused_and_nothing_behind_it_touched",
    ) {
        return;
    }
    let probe = probe_bin();
    // Relative to the chroot base: <exec>, <exec>/<id>, <exec>/<id>/root, and inside root.
    for depth in ["exec", "id", "root", "root/dev", "root/dev/net", "root/run"] {
        let sandbox = Sandbox::new("sldir");
        let id = unique("sldir");
        let host_dir = sandbox.base.join("host-dir");
        std::fs::create_dir(&host_dir).unwrap();
        std::fs::set_permissions(&host_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // What a failed start removes by name in the jail must not go from the host.
        let host_files = [
            "kvm",
            "tun",
            "urandom",
            "userfaultfd",
            "jail-probe",
            "jail-probe.pid",
        ];
        for name in host_files {
            std::fs::write(host_dir.join(name), "host").unwrap();
        }
        let exec_dir = sandbox.base.join("jail-probe");
        let planted = match depth {
            "exec" => exec_dir.clone(),
            "id" => exec_dir.join(&id),
            "root" => exec_dir.join(&id).join("root"),
            inside => exec_dir.join(&id).join(inside),
        };
        std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&host_dir, &planted).unwrap();
        let mut cmd = sandbox.jailer(&id, &probe);
        cmd.args(["--cgroup", "pids.max=8"]);
        let r = run(cmd, DEADLINE);
        assert_refused(&r, "jail dir", "symbolic link");
        let meta = std::fs::metadata(&host_dir).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o755), "{depth}");
        let mut left: Vec<String> = std::fs::read_dir(&host_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut expected = host_files.map(String::from).to_vec();
        expected.sort();
        assert_eq!(left, expected, "{depth}: a host file was removed or added");
    }
}
