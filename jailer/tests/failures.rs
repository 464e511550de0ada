//! Refused starts: one line naming the step, a non-zero status, nothing left behind, and a
//! second start of a running instance refused without harm to it.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{assert_refused, can_jail, probe_bin, run, unique, Sandbox};

const TIMEOUT: Duration = Duration::from_secs(60);

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn invalid_arguments_are_refused_before_anything_is_created() {
    if !can_jail("invalid_arguments_are_refused_before_anything_is_created") {
        return;
    }
    let sandbox = Sandbox::new("invalid");
    let probe = probe_bin();
    let long_id = "a".repeat(65);
    let cases: &[(&str, &[&str], &str)] = &[
        ("bad/id", &[], "Invalid instance id"),
        (&long_id, &[], "Invalid instance id"),
        ("ok", &["--cgroup", "pids.max"], "Invalid --cgroup"),
        ("ok", &["--cgroup", "=5"], "Invalid --cgroup"),
        ("ok", &["--cgroup", "../pids.max=5"], "Invalid --cgroup"),
        ("ok", &["--cgroup", "pids.max="], "Invalid --cgroup"),
        ("ok", &["--cgroup-version", "3"], "Invalid --cgroup-version"),
        (
            "ok",
            &["--resource-limit", "nproc=5"],
            "Invalid --resource-limit",
        ),
        (
            "ok",
            &["--landlock-rule", "data:rw"],
            "Invalid --landlock-rule",
        ),
        (
            "ok",
            &["--netns", "/nonexistent/netns"],
            "Cannot use network namespace",
        ),
    ];
    for (id, extra, reason) in cases {
        let mut cmd = sandbox.jailer(id, &probe);
        cmd.args(*extra);
        assert_refused(&run(cmd, TIMEOUT), "validate", reason);
    }
    let mut cmd = sandbox.jailer("ok", Path::new("/nonexistent/palisade"));
    cmd.current_dir("/");
    assert_refused(
        &run(cmd, TIMEOUT),
        "validate",
        "Cannot use exec file /nonexistent/palisade",
    );
    // A missing flag is refused by the argument parser, on one line too.
    let r = run(std::process::Command::new(common::jailer_bin()), TIMEOUT);
    assert_refused(&r, "validate", "--id");
    assert!(entries(&sandbox.base).is_empty());
    assert!(sandbox.cgroup_dirs().is_empty());
}

#[test]
fn a_start_that_fails_at_any_later_step_leaves_nothing_behind() {
    if !can_jail("a_start_that_fails_at_any_later_step_leaves_nothing_behind") {
        return;
    }
    let sandbox = Sandbox::new("cleanup");
    let probe = probe_bin();
    // On the host, in the child before the jail, and in the jail after the privilege drop.
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--cgroup", "pids.max=lots"],
            "cgroups",
            "Cannot write \"lots\"",
        ),
        (
            &["--cgroup", "nosuchcontroller.max=1"],
            "cgroups",
            "not available",
        ),
        (
            &["--cgroup", "pids.max=8", "--netns", "/etc/passwd"],
            "netns",
            "Cannot join",
        ),
        (
            &["--cgroup", "pids.max=8", "--landlock-rule", "/missing:r"],
            "landlock",
            "Cannot open /missing",
        ),
    ];
    for (extra, step, reason) in cases {
        let id = unique("cleanup");
        let mut cmd = sandbox.jailer(&id, &probe);
        cmd.args(*extra);
        assert_refused(&run(cmd, TIMEOUT), step, reason);
        assert!(
            entries(&sandbox.base).is_empty(),
            "{step}: {:?}",
            entries(&sandbox.base)
        );
        assert!(
            sandbox.cgroup_dirs().is_empty(),
            "{step}: {:?}",
            sandbox.cgroup_dirs()
        );
    }

    // Files the caller staged in the jail stay; what the failed start made goes.
    let id = unique("staged");
    let root = sandbox.root(&probe, &id);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("vm.json"), "{}").unwrap();
    let mut cmd = sandbox.jailer(&id, &probe);
    cmd.args(["--cgroup", "pids.max=8", "--landlock-rule", "/missing:rw"]);
    assert_refused(&run(cmd, TIMEOUT), "landlock", "Cannot open /missing");
    assert_eq!(entries(&root), ["vm.json"]);
    assert!(sandbox.cgroup_dirs().is_empty());
}

#[test]
fn a_second_start_with_the_same_id_is_refused_while_the_first_runs() {
    if !can_jail("a_second_start_with_the_same_id_is_refused_while_the_first_runs") {
        return;
    }
    let sandbox = Sandbox::new("twice");
    let probe = probe_bin();
    let id = unique("twice");
    let root = sandbox.stage_libraries(&probe, &id);
    let mut first = sandbox.jailer(&id, &probe);
    first.args(["--cgroup", "pids.max=8", "--", "--hold"]);
    first.stdin(Stdio::piped());
    let mut first = common::spawn(first);
    let stdin = first.stdin.take().unwrap();
    let mut stdout = BufReader::new(first.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("hold"), "{line}");
    let pid = std::fs::read_to_string(root.join("jail-probe.pid")).unwrap();

    let mut second = sandbox.jailer(&id, &probe);
    second.args(["--cgroup", "pids.max=8"]);
    assert_refused(&run(second, TIMEOUT), "jail dir", "is already running");
    // The running instance lost nothing.
    assert_eq!(
        std::fs::read_to_string(root.join("jail-probe.pid")).unwrap(),
        pid
    );
    assert!(root.join("jail-probe").exists() && root.join("dev/kvm").exists());
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    drop(stdin);
    let mut status = None;
    for _ in 0..(TIMEOUT.as_millis() / 20) {
        status = first.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(status.unwrap().success());

    // Once it has ended, the same id starts again in the same jail.
    let again = run(sandbox.jailer(&id, &probe), TIMEOUT);
    again.assert_success();
    assert!(again.stdout.contains("done"), "{again:#?}");
}
