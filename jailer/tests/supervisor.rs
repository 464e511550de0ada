//! Without --daemonize the jailer stays as the VMM's supervisor: signals reach the VMM, its
//! exit status comes back, and the VMM does not outlive the jailer.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{can_jail, probe_bin, unique, Sandbox};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the probe in hold mode (it waits for stdin to close); returns the jailer, the
/// probe's stdin and the probe's pid.
fn start_holding(sandbox: &Sandbox, id: &str) -> (Child, std::process::ChildStdin, i32) {
    let probe = probe_bin();
    let root = sandbox.stage_libraries(&probe, id);
    let mut cmd = sandbox.jailer(id, &probe);
    cmd.args(["--cgroup", "pids.max=8", "--", "--hold"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("hold"), "{line}");
    let pid = std::fs::read_to_string(root.join("jail-probe.pid")).unwrap();
    (child, stdin, pid.trim().parse().unwrap())
}

fn wait(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..TIMEOUT.as_millis() / 20 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the jailer did not exit");
}

#[test]
fn sigterm_to_the_jailer_reaches_the_vmm_and_its_status_comes_back() {
    if !can_jail("sigterm_to_the_jailer_reaches_the_vmm_and_its_status_comes_back") {
        return;
    }
    let sandbox = Sandbox::new("sigterm");
    let (mut jailer, _stdin, pid) = start_holding(&sandbox, &unique("sigterm"));
    // SAFETY: sends SIGTERM to the jailer this test started.
    assert_eq!(unsafe { libc::kill(jailer.id() as i32, libc::SIGTERM) }, 0);
    // The probe has no SIGTERM handler: it dies of it, and the jailer reports 128 + 15.
    assert_eq!(wait(&mut jailer).code(), Some(143));
    common::wait_gone(pid, TIMEOUT);
    assert!(
        sandbox.cgroup_dirs().is_empty(),
        "{:?}",
        sandbox.cgroup_dirs()
    );
}

#[test]
fn the_vmm_does_not_outlive_a_killed_jailer() {
    if !can_jail("the_vmm_does_not_outlive_a_killed_jailer") {
        return;
    }
    let sandbox = Sandbox::new("sigkill");
    let (mut jailer, _stdin, pid) = start_holding(&sandbox, &unique("sigkill"));
    jailer.kill().unwrap();
    wait(&mut jailer);
    common::wait_gone(pid, TIMEOUT);
}
