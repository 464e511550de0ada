//! The real VMM, started by the jailer, boots the probe guest from files staged in its jail.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use std::path::{Path, PathBuf};

use common::api::{api_request, wait_for_socket};
use common::{can_jail, probe_guest, run, unique, vmm_bin, Sandbox};

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn jailed_vmm_boots_the_probe_guest_from_a_config_file() {
    if !can_jail("jailed_vmm_boots_the_probe_guest_from_a_config_file") {
        return;
    }
    let vmm = vmm_bin();
    let sandbox = Sandbox::new("boot");
    let id = unique("boot");
    let root = stage(&sandbox, &vmm, &id);
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": "/probe.elf", "boot_args": "console=ttyS0 probe.run=hello"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}
    });
    std::fs::write(root.join("vm.json"), config.to_string()).unwrap();

    let mut cmd = sandbox.jailer(&id, &vmm);
    cmd.args([
        "--new-pid-ns",
        "--cgroup",
        "memory.limit_in_bytes=512M",
        "--cgroup",
        "pids.max=64",
    ]);
    cmd.args(["--", "--no-api", "--config-file", "/vm.json"]);
    let run = run(cmd, TIMEOUT);
    run.assert_success();
    assert!(run.stdout.contains("probe: hello ok"), "{run:#?}");
    assert!(run.stderr.contains("Landlock ABI"), "{}", run.stderr);
    // The log names the instance: the jailer passed --id first.
    assert!(run.stderr.contains(&format!("[{id}:")), "{}", run.stderr);
    assert!(root.join("vm.json").exists() && root.join("palisade").exists());
}

#[test]
fn a_jailed_vmm_writes_the_console_to_a_serial_path_inside_its_jail() {
    if !can_jail("a_jailed_vmm_writes_the_console_to_a_serial_path_inside_its_jail") {
        return;
    }
    let vmm = vmm_bin();
    let sandbox = Sandbox::new("serial");
    let id = unique("serial");
    let root = stage(&sandbox, &vmm, &id);
    // The path is the jail's: /run is where the jailed VMM may create files.
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": "/probe.elf", "boot_args": "console=ttyS0 probe.run=hello"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
        "serial": {"serial_out_path": "/run/console.log"}
    });
    std::fs::write(root.join("vm.json"), config.to_string()).unwrap();
    let mut cmd = sandbox.jailer(&id, &vmm);
    cmd.args(["--new-pid-ns", "--cgroup", "pids.max=64"]);
    cmd.args(["--", "--no-api", "--config-file", "/vm.json"]);
    let run = run(cmd, TIMEOUT);
    run.assert_success();
    let console = root.join("run/console.log");
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(text.contains("probe: hello ok"), "{text}");
    assert!(!run.stdout.contains("probe: hello"), "{}", run.stdout);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&console).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// As with Firecracker, the caller stages the guest's files in the jail before the start (the
/// jailer keeps them): the VMM's shared libraries and the probe guest as /probe.elf.
fn stage(sandbox: &Sandbox, vmm: &Path, id: &str) -> PathBuf {
    let root = sandbox.stage_libraries(vmm, id);
    std::fs::copy(probe_guest(), root.join("probe.elf")).unwrap();
    root
}

#[test]
fn jailed_vmm_boots_the_probe_guest_over_the_api_socket_in_the_jail() {
    if !can_jail("jailed_vmm_boots_the_probe_guest_over_the_api_socket_in_the_jail") {
        return;
    }
    let vmm = vmm_bin();
    let sandbox = Sandbox::new("api");
    let id = unique("api");
    let root = stage(&sandbox, &vmm, &id);
    let mut cmd = sandbox.jailer(&id, &vmm);
    cmd.args(["--new-pid-ns", "--cgroup", "pids.max=64"]);
    cmd.args(["--", "--api-sock", "/run/api.sock"]);
    let child = common::spawn(cmd);
    // The socket is inside the jail: the host reaches it under the jail's root.
    let sock = root.join("run/api.sock");
    wait_for_socket(&sock, TIMEOUT);
    let machine = r#"{"vcpu_count": 1, "mem_size_mib": 64}"#;
    let boot =
        r#"{"kernel_image_path": "/probe.elf", "boot_args": "console=ttyS0 probe.run=hello"}"#;
    let start = r#"{"action_type": "InstanceStart"}"#;
    for (path, body) in [
        ("/machine-config", machine),
        ("/boot-source", boot),
        ("/actions", start),
    ] {
        let (status, answer) = api_request(&sock, "PUT", path, body);
        assert_eq!(status, 204, "PUT {path}: {answer}");
    }
    let run = common::finish(child, TIMEOUT);
    run.assert_success();
    assert!(run.stdout.contains("probe: hello ok"), "{run:#?}");
}

/// The descriptors of a running process above stderr: (fd, open flags, what it refers to).
fn descriptors(pid: u32) -> Vec<(u32, u32, std::fs::Metadata)> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd: u32 = entry
            .unwrap()
            .file_name()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        if fd <= 2 {
            continue;
        }
        // A descriptor closed since the listing (a connection that just ended) is skipped.
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap();
        let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")) else {
            continue;
        };
        fds.push((fd, flags, meta));
    }
    fds
}

#[test]
fn the_jailed_vmm_holds_no_writable_descriptor_of_a_file_and_cannot_rewrite_its_pid_file() {
    if !can_jail(
        "the_jailed_vmm_holds_no_writable_descriptor_of_a_file_and_cannot_rewrite_its_pid_file",
    ) {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let vmm = vmm_bin();
    let sandbox = Sandbox::new("vmmfds");
    let id = unique("vmmfds");
    let root = stage(&sandbox, &vmm, &id);
    let mut cmd = sandbox.jailer(&id, &vmm);
    cmd.args(["--new-pid-ns", "--cgroup", "pids.max=64"]);
    cmd.args(["--", "--api-sock", "/run/api.sock"]);
    let mut child = common::spawn(cmd);
    wait_for_socket(&root.join("run/api.sock"), TIMEOUT);
    let pid_file = root.join("palisade.pid");
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    let fds = descriptors(pid);
    let _ = child.kill();
    let _ = child.wait();
    let pid_meta = std::fs::metadata(&pid_file).unwrap();
    let (mut lock, mut writable) = (Vec::new(), Vec::new());
    for (fd, flags, meta) in &fds {
        let file_or_dir = meta.is_file() || meta.is_dir();
        let access = (*flags as i32) & libc::O_ACCMODE;
        if (meta.dev(), meta.ino()) == (pid_meta.dev(), pid_meta.ino()) {
            lock.push((*fd, access));
        }
        if file_or_dir && access != libc::O_RDONLY {
            writable.push(*fd);
        }
        // Directories (a way out of the jail through openat) never cross exec.
        assert!(!meta.is_dir(), "fd {fd} is a directory: {fds:?}");
    }
    assert_eq!(writable, Vec::<u32>::new(), "{fds:?}");
    assert_eq!(lock.len(), 1, "{fds:?}");
    assert_eq!(lock[0].1, libc::O_RDONLY, "{fds:?}");
    assert_eq!((pid_meta.uid(), pid_meta.nlink()), (0, 1));
    // Root owns the jail's root: the VMM may add files there but not replace the pid file.
    let root_meta = std::fs::metadata(&root).unwrap();
    assert_eq!(root_meta.uid(), 0);
    assert_eq!(root_meta.mode() & 0o7777, 0o1770);
}
