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
