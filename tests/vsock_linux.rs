//! The Linux test guest on virtio-vsock under the real VMM, restored from the booted golden
//! snapshot (tests/common/linux.rs: no boot per test): the guest's `vsock` check (an echo to
//! a host listener at `<uds_path>_1234`, then a line the host WRITEs through the guest's
//! agent) passes, and an EXEC through the agent with the host client `client.py` returns the
//! command's exit code and output. The clone's vsock socket is its own (`vsock_override`),
//! so guest-initiated connections reach the clone's `<uds_path>_1234`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::kvm_available;
use common::linux::LinuxClone;
use common::vsock::EchoListener;

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
fn a_restored_linux_guest_passes_its_vsock_check_and_its_agent_runs_a_host_exec() {
    let test = "a_restored_linux_guest_passes_its_vsock_check_and_its_agent_runs_a_host_exec";
    if !kvm_available(test) {
        return;
    }
    let clone = LinuxClone::start(true);
    let uds = clone.uds.clone();
    let echo = EchoListener::start(&uds, 1234);

    // An EXEC first (its own exit code and both outputs come back).
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

    // host -> guest: the line the check reads (written before the check runs, it finds a
    // plain file rather than making its FIFO: resources/guest/checks/vsock).
    let out = client(&uds, &["write", "/tmp/vsock-from-host", "hello-from-host"]);
    assert!(out.status.success(), "{out:?}");
    // The check, run by hand (`/init NAME`), told the agent's pid as init would.
    let check = clone.sh("for d in /proc/[0-9]*; do read -r c <$d/comm; \\
         if [ \"$c\" = palisade-agent ]; then agent_pid=${d#/proc/}; break; fi; done; \\
         export agent_pid; /init vsock");
    let detail = check
        .lines()
        .find_map(|l| l.strip_prefix("palisade-result: vsock "))
        .unwrap_or_else(|| panic!("no vsock result:\n{check}"));
    assert_eq!(
        detail, "pass agent=running echo=yes host_line=hello-from-host",
        "{check}"
    );
    let received = echo.received.lock().unwrap();
    assert_eq!(received.len(), 1, "one guest connection to <uds_path>_1234");
    assert_eq!(received[0].len(), 65536);
}
