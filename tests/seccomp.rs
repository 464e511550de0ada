//! Every thread runs under its own seccomp filter, and a syscall outside it kills the VMM with
//! SIGSYS at the point where the thread first needs it.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::os::fd::FromRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use common::{kvm_available, probe_path, ApiVm, TestVm};

const TIMEOUT: Duration = Duration::from_secs(60);
const SIGSYS: i32 = 31;

/// The built-in profile with `syscall` removed from the filter of `thread`.
fn profile_without(thread: &str, syscall: &str) -> serde_json::Value {
    let mut profile: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/seccomp-profiles/x86_64.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let rules = profile[thread]["filter"].as_array_mut().unwrap();
    let before = rules.len();
    rules.retain(|r| r["syscall"] != syscall);
    assert!(rules.len() < before, "{thread} does not allow {syscall}");
    profile
}

fn write_profile(dir: &std::path::Path, profile: &serde_json::Value) -> String {
    let path = dir.join("filters.json");
    std::fs::write(&path, profile.to_string()).unwrap();
    path.to_string_lossy().into_owned()
}

/// The kernel log's seccomp audit lines (type=1326) as they are now (empty when the log is
/// unreadable): taken before a VMM starts, so that a line left by an earlier process with the
/// same pid (pids are reused; this log holds a whole test run's kills) is never read as its.
fn seccomp_audit_lines() -> Vec<String> {
    let Ok(out) = Command::new("dmesg").output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("type=1326"))
        .map(str::to_owned)
        .collect()
}

/// The kernel's audit line for a seccomp kill of `pid` written after `before` was taken,
/// when the kernel log is readable and the kernel did not rate-limit it away.
fn audited_syscall(pid: u32, before: &[String]) -> Option<u64> {
    let line = seccomp_audit_lines()
        .into_iter()
        .rev()
        .find(|l| l.contains(&format!(" pid={pid} ")) && !before.contains(l))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("syscall="))
        .and_then(|n| n.parse().ok())
}

#[test]
fn every_thread_of_a_running_vmm_is_filtered() {
    if !kvm_available("every_thread_of_a_running_vmm_is_filtered") {
        return;
    }
    let mut vm = ApiVm::start(&[]);
    let mut c = vm.client();
    c.put(
        "/machine-config",
        serde_json::json!({"vcpu_count": 2, "mem_size_mib": 64}),
    );
    c.put(
        "/boot-source",
        serde_json::json!({"kernel_image_path": probe_path(), "boot_args": "probe.run=idle"}),
    );
    let r = c.put(
        "/actions",
        serde_json::json!({"action_type": "InstanceStart"}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.wait_for_output("probe: idle ok", TIMEOUT);
    let pid = vm.running.child.id();
    let mut seen = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm"))
            .unwrap()
            .trim()
            .to_string();
        if name.starts_with("kvm-") {
            // A kernel worker KVM attaches to the VM's process (e.g. kvm-nx-lpage-recovery).
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(mode, "2", "thread {name} is not in seccomp filter mode");
        seen.push(name);
    }
    seen.sort();
    assert_eq!(seen, ["api", "palisade", "vcpu0", "vcpu1"]);
    vm.running.kill();
}

#[test]
fn a_vcpu_without_ioctl_dies_at_its_first_kvm_run() {
    if !kvm_available("a_vcpu_without_ioctl_dies_at_its_first_kvm_run") {
        return;
    }
    let mut vm = TestVm::probe("hello", 1, 64);
    let profile = write_profile(vm.dir.path(), &profile_without("vcpu", "ioctl"));
    vm.args.extend(["--seccomp-filter".into(), profile]);
    let before = seccomp_audit_lines();
    let running = vm.spawn();
    let pid = running.child.id();
    let run = running.wait(TIMEOUT);
    assert_eq!(run.status.signal(), Some(SIGSYS), "{run:?}");
    assert!(
        !run.stdout.contains("probe: ready"),
        "the guest ran: {}",
        run.stdout
    );
    assert!(run.stderr.contains("Starting 1 vCPU"), "{}", run.stderr);
    if let Some(nr) = audited_syscall(pid, &before) {
        assert_eq!(nr, 16, "the kernel names ioctl");
    }
}

#[test]
fn the_vmm_thread_without_epoll_wait_dies_when_it_enters_its_event_loop() {
    if !kvm_available("the_vmm_thread_without_epoll_wait_dies_when_it_enters_its_event_loop") {
        return;
    }
    let mut vm = TestVm::probe("idle", 1, 64);
    let profile = write_profile(vm.dir.path(), &profile_without("vmm", "epoll_wait"));
    vm.args.extend(["--seccomp-filter".into(), profile]);
    let before = seccomp_audit_lines();
    let running = vm.spawn();
    let pid = running.child.id();
    let run = running.wait(TIMEOUT);
    assert_eq!(run.status.signal(), Some(SIGSYS), "{run:?}");
    assert!(run.stderr.contains("Starting 1 vCPU"), "{}", run.stderr);
    if let Some(nr) = audited_syscall(pid, &before) {
        assert_eq!(nr, 232, "the kernel names epoll_wait");
    }
}

#[test]
fn the_api_thread_without_accept4_dies_at_the_first_connection() {
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(dir.path(), &profile_without("api", "accept4"));
    let sock = dir.path().join("api.sock");
    let before = seccomp_audit_lines();
    let mut child = Command::new(common::palisade_bin())
        .arg("--api-sock")
        .arg(&sock)
        .args(["--seccomp-filter", &profile])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The socket exists before the thread is filtered; nothing has called accept yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "died before any connection"
    );
    let _client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(SIGSYS));
    if let Some(nr) = audited_syscall(child.id(), &before) {
        assert_eq!(nr, 288, "the kernel names accept4");
    }
}

#[test]
fn no_seccomp_runs_unfiltered_with_a_warning_and_bad_filters_are_refused() {
    if !kvm_available("no_seccomp_runs_unfiltered_with_a_warning_and_bad_filters_are_refused") {
        return;
    }
    let mut vm = TestVm::probe("hello", 1, 64);
    vm.args.push("--no-seccomp".into());
    let run = vm.run(TIMEOUT);
    run.assert_success();
    assert!(
        run.stderr.contains("Seccomp filtering is OFF"),
        "{}",
        run.stderr
    );

    let mut vm = TestVm::probe("hello", 1, 64);
    let bad = vm.dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"vmm": {"default_action": "kill_process", "filter_action": "allow", "filter": [{"syscall": "no_such_call"}]}}"#).unwrap();
    vm.args.extend([
        "--seccomp-filter".into(),
        bad.to_string_lossy().into_owned(),
    ]);
    let run = vm.run(TIMEOUT);
    assert_eq!(run.status.code(), Some(152), "{run:?}");
    assert!(
        run.stderr.contains("Invalid seccomp filter file"),
        "{}",
        run.stderr
    );
}

/// Forks; the child installs the embedded filter of `kind` (as that thread does at start),
/// runs `call` and exits 0. Returns how the child ended.
fn in_filtered_child(kind: palisade::seccomp::ThreadKind, call: fn()) -> std::process::ExitStatus {
    let filters = palisade::seccomp::SeccompFilters::embedded();
    // SAFETY: the child only installs a filter from memory already built, makes raw
    // syscalls and exits with _exit: nothing that needs another thread of the parent.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        if filters.apply(kind).is_err() {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(99) };
        }
        call();
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    std::process::ExitStatus::from_raw(status)
}

const IORING_REGISTER_FILES: libc::c_long = 2;
const IORING_REGISTER_FILES_UPDATE: libc::c_long = 6;

fn io_uring_setup() {
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes the 120-byte io_uring_params it is given.
    unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) };
}

fn io_uring_register_files() {
    // SAFETY: fd -1: the kernel returns EBADF if the filter lets the call through.
    unsafe { libc::syscall(libc::SYS_io_uring_register, -1, IORING_REGISTER_FILES, 0, 0) };
}

fn io_uring_register_files_update_and_enter() {
    // SAFETY: fd -1: the kernel returns EBADF without touching memory.
    unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            -1,
            IORING_REGISTER_FILES_UPDATE,
            0,
            0,
        )
    };
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_io_uring_enter, -1, 0, 0, 0, 0, 0) };
}

fn io_uring_enter() {
    // SAFETY: fd -1: the kernel returns EBADF without touching memory.
    unsafe { libc::syscall(libc::SYS_io_uring_enter, -1, 0, 0, 0, 0, 0) };
}

#[test]
fn no_filtered_thread_can_make_an_io_uring_or_register_anything_but_a_file_update() {
    use palisade::seccomp::ThreadKind;
    for kind in [ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Vcpu] {
        let status = in_filtered_child(kind, io_uring_setup);
        assert_eq!(
            status.signal(),
            Some(SIGSYS),
            "{kind:?} io_uring_setup: {status:?}"
        );
        let status = in_filtered_child(kind, io_uring_register_files);
        assert_eq!(
            status.signal(),
            Some(SIGSYS),
            "{kind:?} REGISTER_FILES: {status:?}"
        );
    }
    // A vCPU thread never waits on a ring: an Async drive's reset orphans what is in flight.
    let status = in_filtered_child(ThreadKind::Vcpu, io_uring_enter);
    assert_eq!(
        status.signal(),
        Some(SIGSYS),
        "vcpu io_uring_enter: {status:?}"
    );
    // What the Async engine needs once the VMM runs stays allowed.
    let status = in_filtered_child(ThreadKind::Vmm, io_uring_register_files_update_and_enter);
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// madvise(NULL, 0, advice): the kernel returns 0 or EINVAL without touching memory; only the
/// filter's verdict on the advice matters.
fn madvise_with(advice: libc::c_int) {
    // SAFETY: a zero-length range: no mapping changes.
    unsafe { libc::madvise(std::ptr::null_mut(), 0, advice) };
}

fn madvise_dontneed() {
    madvise_with(libc::MADV_DONTNEED);
}

fn madvise_mergeable() {
    madvise_with(libc::MADV_MERGEABLE);
}

fn madvise_dodump() {
    madvise_with(libc::MADV_DODUMP);
}

fn madvise_free() {
    madvise_with(libc::MADV_FREE);
}

/// Forks; the child installs the embedded filter of `kind`, runs `call`, then writes one
/// byte to a pipe (`write` is in every filter; the child's own exit may not be: the api
/// filter has neither `exit` nor `exit_group`). True when the byte came: `call` returned.
fn returns_in_filtered_child(kind: palisade::seccomp::ThreadKind, call: fn()) -> bool {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array it is given.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let filters = palisade::seccomp::SeccompFilters::embedded();
    // SAFETY: as in `in_filtered_child`; the child also writes one byte to a pipe.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        if filters.apply(kind).is_ok() {
            call();
            // SAFETY: one byte from a live buffer to the pipe's write end.
            unsafe { libc::write(fds[1], [1u8].as_ptr().cast(), 1) };
        }
        // SAFETY: ends the child at once (killed here under filters without exit_group).
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    // SAFETY: closes the parent's write end, which it owns (the child's is gone with it).
    unsafe { libc::close(fds[1]) };
    // SAFETY: the read end is owned by nothing else; the File closes it.
    let mut read_end = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut byte = [0u8; 1];
    // End of file (0) when the child wrote nothing.
    std::io::Read::read(&mut read_end, &mut byte).unwrap_or(0) == 1
}

#[test]
fn every_filtered_thread_may_madvise_dontneed_and_nothing_else() {
    use palisade::seccomp::ThreadKind;
    for kind in [ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Vcpu] {
        // glibc's malloc and the balloon give memory back with MADV_DONTNEED.
        assert!(
            returns_in_filtered_child(kind, madvise_dontneed),
            "{kind:?} MADV_DONTNEED is killed"
        );
        assert!(
            !returns_in_filtered_child(kind, madvise_mergeable),
            "the check itself: {kind:?} MADV_MERGEABLE returned"
        );
        // KSM merging of guest memory, core dumps of it, lazy frees: killed.
        for (name, call) in [
            ("MADV_MERGEABLE", madvise_mergeable as fn()),
            ("MADV_DODUMP", madvise_dodump),
            ("MADV_FREE", madvise_free),
        ] {
            let status = in_filtered_child(kind, call);
            assert_eq!(status.signal(), Some(SIGSYS), "{kind:?} {name}: {status:?}");
        }
    }
}
