//! The Linux test guest on virtio-vsock under the real VMM: the guest's `vsock` check (an echo
//! to a host listener at `<uds_path>_1234`, then a line the host WRITEs through the guest's
//! agent) passes, and an EXEC through the agent with the host client `client.py` returns the
//! command's exit code and output.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::vsock::{wait_for_line, EchoListener};
use common::{kvm_available, linux_guest_dir, TestVm};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(600);

/// `resources/guest/agent/client.py --uds UDS ARGS...`.
fn client(uds: &Path, args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/guest/agent/client.py");
    Command::new("python3")
        .arg(script)
        .arg("--uds")
        .arg(uds)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_linux_guest_passes_its_vsock_check_and_its_agent_runs_a_host_exec() {
    if !kvm_available("the_linux_guest_passes_its_vsock_check_and_its_agent_runs_a_host_exec") {
        return;
    }
    let dir = linux_guest_dir();
    let boot_args = std::fs::read_to_string(dir.join("boot_args")).expect("boot_args");
    let mut vm = TestVm::new(json!({
        "boot-source": {
            "kernel_image_path": dir.join("vmlinux"),
            "initrd_path": dir.join("initramfs.cpio"),
            "boot_args": format!("{} palisade.test=vsock", boot_args.trim()),
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
    }));
    let uds = vm.dir.path().join("v.sock");
    vm.config["vsock"] = json!({"guest_cid": 3, "uds_path": uds});
    let echo = EchoListener::start(&uds, 1234);
    let mut running = vm.spawn();
    wait_for_line(
        &mut running,
        "palisade-vsock: waiting for the host",
        TIMEOUT,
    );

    // The guest is waiting: an EXEC first (its own exit code and both outputs come back).
    let out = client(
        &uds,
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "echo out-$((6*7)); echo err >&2; exit 7",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out-42\n", "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err"),
        "{out:?}"
    );

    let out = client(&uds, &["write", "/tmp/vsock-from-host", "hello-from-host"]);
    assert!(out.status.success(), "{out:?}");
    let run = running.wait(TIMEOUT);
    run.assert_success();
    let detail = run.assert_guest_pass("vsock");
    assert_eq!(
        detail, "agent=running echo=yes host_line=hello-from-host",
        "{}",
        run.stdout
    );
    let received = echo.received.lock().unwrap();
    assert_eq!(received.len(), 1, "one guest connection to <uds_path>_1234");
    assert_eq!(received[0].len(), 65536);
}
