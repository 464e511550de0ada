//! The jail probe, started by the jailer in place of the VMM, tries what an attacker who owns
//! the VMM would; every attack must fail and every control (what a VMM needs) must work.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::probe::{assert_outcomes, attempt, detail, number_after, Targets};
use common::{can_jail, probe_bin, run, unique, Sandbox};

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn every_attack_fails_in_a_new_pid_namespace_with_limits() {
    if !can_jail("every_attack_fails_in_a_new_pid_namespace_with_limits") {
        return;
    }
    let sandbox = Sandbox::new("attacks");
    let targets = Targets::new(sandbox.uid);
    let id = unique("attacks");
    let probe = probe_bin();
    sandbox.stage_libraries(&probe, &id);
    let outside = sandbox.base.join("outside-the-jail");
    let mut cmd = sandbox.jailer(&id, &probe);
    cmd.args(["--new-pid-ns", "--resource-limit", "no-file=64"]);
    cmd.args([
        "--cgroup",
        "pids.max=32",
        "--cgroup",
        "memory.limit_in_bytes=64M",
    ]);
    cmd.arg("--").args(targets.probe_args(&outside));
    let run = run(cmd, TIMEOUT);
    run.assert_success();
    let lines = run.probe_lines();
    assert_outcomes(&run, &lines, &[]);

    // What blocked each attack: the layer meant for it, not an accident of the setup.
    let identity = detail(&lines, "identity");
    let uid = sandbox.uid;
    assert!(
        identity.contains(&format!("uid={uid} gid={uid} groups=0 pid=1 ")),
        "{identity}"
    );
    assert!(identity.ends_with("caps=0"), "{identity}");
    for (name, errno) in [
        ("unshare_user_ns", "EPERM"),
        ("clone_user_ns", "EPERM"),
        ("setns", "EPERM"),
        ("clone3_user_ns", "ENOSYS"),
        ("tcp_bind", "EACCES"),
        ("raw_socket", "EPERM"),
        ("packet_socket", "EPERM"),
    ] {
        assert!(
            detail(&lines, name).ends_with(errno),
            "{name}: {}",
            detail(&lines, name)
        );
    }
    assert!(detail(&lines, "tcp_connect").ends_with("EACCES"));
    assert!(detail(&lines, "see_host_processes").contains("ESRCH"));
    assert!(number_after(detail(&lines, "exceed_no_file_limit"), "highest fd") < 64);
    assert!(number_after(detail(&lines, "exceed_pids_limit"), "after") < 32);
    assert!(detail(&lines, "exceed_memory_limit").contains("signal 9"));
    assert!(!outside.exists());
    targets.assert_untouched();
    assert!(
        run.stderr.contains("palisade-jailer: Landlock ABI "),
        "{}",
        run.stderr
    );
    // The supervisor removed the jail's cgroups (and the parent it created) when the probe ended.
    assert_eq!(sandbox.cgroup_dirs(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn daemonized_without_a_pid_namespace_landlock_still_stops_signals_and_ptrace() {
    if !can_jail("daemonized_without_a_pid_namespace_landlock_still_stops_signals_and_ptrace") {
        return;
    }
    let sandbox = Sandbox::new("daemon");
    let targets = Targets::new(sandbox.uid);
    let id = unique("daemon");
    let probe = probe_bin();
    let root = sandbox.stage_libraries(&probe, &id);
    let outside = sandbox.base.join("outside-the-jail");
    let mut cmd = sandbox.jailer(&id, &probe);
    cmd.args([
        "--daemonize",
        "--cgroup",
        "pids.max=32",
        "--cgroup",
        "memory.limit_in_bytes=64M",
    ]);
    cmd.arg("--").args(targets.probe_args(&outside));
    cmd.args(["--out", "/results.jsonl"]);
    let run = run(cmd, TIMEOUT);
    // The jailer returns once the VMM runs, silently (the VMM's stdio is /dev/null).
    run.assert_success();
    assert_eq!(run.stdout, "");
    let pid: i32 = std::fs::read_to_string(root.join("jail-probe.pid"))
        .unwrap()
        .parse()
        .unwrap();
    common::wait_gone(pid, TIMEOUT);
    let results = std::fs::read_to_string(root.join("results.jsonl")).unwrap();
    let lines = common::parse_lines(&results);
    // Without a pid namespace the victim process is visible (EPERM, not ESRCH) but out of reach.
    assert_outcomes(&run, &lines, &["see_host_processes"]);
    assert!(detail(&lines, "signal_outside").ends_with("EPERM"));
    assert!(detail(&lines, "ptrace_outside").ends_with("EPERM"));
    assert!(detail(&lines, "abstract_unix_connect").ends_with("EPERM"));
    let identity = detail(&lines, "identity");
    assert!(
        identity.contains(&format!("pid={pid} sid={pid} ")),
        "{identity}"
    );
    assert!(!outside.exists());
    targets.assert_untouched();
}

#[test]
fn without_landlock_the_same_uid_can_connect_and_signal_but_namespaces_stay_closed() {
    if !can_jail("without_landlock_the_same_uid_can_connect_and_signal_but_namespaces_stay_closed")
    {
        return;
    }
    let sandbox = Sandbox::new("nolandlock");
    let targets = Targets::new(sandbox.uid);
    let id = unique("nolandlock");
    let probe = probe_bin();
    sandbox.stage_libraries(&probe, &id);
    let mut cmd = sandbox.jailer(&id, &probe);
    cmd.arg("--no-landlock")
        .arg("--")
        .args(targets.probe_args(&sandbox.base.join("x")));
    let run = run(cmd, TIMEOUT);
    run.assert_success();
    assert!(!run.stderr.contains("Landlock"), "{}", run.stderr);
    let lines = run.probe_lines();
    for name in [
        "tcp_connect",
        "tcp_bind",
        "signal_outside",
        "abstract_unix_connect",
    ] {
        assert_eq!(attempt(&lines, name)["outcome"], "allowed", "{name}");
    }
    for name in [
        "unshare_user_ns",
        "clone_net_ns",
        "setns",
        "setuid_root",
        "mount",
        "mknod",
    ] {
        assert_eq!(attempt(&lines, name)["outcome"], "blocked", "{name}");
    }
}

#[test]
fn cgroup_v2_jail_is_created_joined_and_removed() {
    if !can_jail("cgroup_v2_jail_is_created_joined_and_removed") {
        return;
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let Some(unified) = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
    else {
        common::skip::skip(
            "cgroup_v2_jail_is_created_joined_and_removed",
            "no cgroup2 mount",
        );
        return;
    };
    let unified = Path::new(unified.split_whitespace().nth(1).unwrap()).to_path_buf();
    let sandbox = Sandbox::new("cgv2");
    let id = unique("cgv2");
    let probe = probe_bin();
    let root = sandbox.stage_libraries(&probe, &id);
    let mut cmd = sandbox.jailer(&id, &probe);
    cmd.args([
        "--cgroup-version",
        "2",
        "--cgroup",
        "cgroup.max.descendants=0",
    ]);
    cmd.args(["--", "--hold"]);
    cmd.stdin(Stdio::piped());
    let mut child = common::spawn(cmd);
    let mut stdin = child.stdin.take().unwrap();
    let jail_cgroup = unified.join(&sandbox.parent_cgroup).join(&id);
    // The probe holds until stdin closes: look at it from the host meanwhile.
    let pid_file = root.join("jail-probe.pid");
    let start = std::time::Instant::now();
    let pid = loop {
        let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
        let members = std::fs::read_to_string(jail_cgroup.join("cgroup.procs")).unwrap_or_default();
        if !text.is_empty() && members.contains(text.trim()) {
            break text;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "probe never joined {jail_cgroup:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.trim())).unwrap();
    assert!(
        own.contains(&format!("0::/{}/{id}\n", sandbox.parent_cgroup)),
        "{own}"
    );
    let limit = std::fs::read_to_string(jail_cgroup.join("cgroup.max.descendants")).unwrap();
    assert_eq!(limit.trim(), "0");
    stdin.write_all(b"").unwrap();
    drop(stdin);
    let run = common::finish(child, TIMEOUT);
    run.assert_success();
    assert!(!jail_cgroup.exists(), "{jail_cgroup:?} left behind");
}

#[test]
fn an_inherited_writable_descriptor_is_closed_and_nothing_inherited_is_writable_in_the_jail() {
    if !can_jail(
        "an_inherited_writable_descriptor_is_closed_and_nothing_inherited_is_writable_in_the_jail",
    ) {
        return;
    }
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let sandbox = Sandbox::new("fds");
    let id = unique("fds");
    let probe = probe_bin();
    let root = sandbox.stage_libraries(&probe, &id);
    // A host file the caller has open read-write, without close-on-exec, as fd 7.
    let host = sandbox.base.join("host-file");
    std::fs::write(&host, "host\n").unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&host)
        .unwrap();
    let raw = file.as_raw_fd();
    let targets = Targets::new(sandbox.uid);
    let mut cmd = sandbox.jailer(&id, &probe);
    cmd.args(["--new-pid-ns", "--cgroup", "pids.max=32", "--cgroup"]);
    cmd.args(["memory.limit_in_bytes=64M", "--"]);
    cmd.args(targets.probe_args(&sandbox.base.join("outside")));
    let to_fd7 = move || {
        // SAFETY: dup2 is async-signal-safe and only duplicates a descriptor.
        match unsafe { libc::dup2(raw, 7) } {
            7 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    // SAFETY: the closure only calls dup2, which is safe between fork and exec.
    unsafe { cmd.pre_exec(to_fd7) };
    let run = run(cmd, TIMEOUT);
    run.assert_success();
    let lines = run.probe_lines();
    assert_outcomes(&run, &lines, &[]);
    // Only the instance lock crosses exec, read-only.
    let fds = detail(&lines, "open_fds");
    let list: Vec<&str> = fds
        .trim_start_matches("open fds [")
        .trim_end_matches(']')
        .split(',')
        .collect();
    assert!(list.len() == 1 && list[0].ends_with(":r:file"), "{fds}");
    assert!(!list[0].starts_with("7:"), "{fds}");
    assert!(detail(&lines, "write_inherited_fds").contains("(file): write EBADF, ftruncate EINVAL"));
    assert!(detail(&lines, "rewrite_pid_file").contains("EACCES"));
    assert_eq!(std::fs::read_to_string(&host).unwrap(), "host\n");
    let pid = std::fs::read_to_string(root.join("jail-probe.pid")).unwrap();
    assert!(pid.trim().parse::<u32>().is_ok(), "{pid:?}");
}
