//! `PUT /serial`: the guest's console goes to a file or FIFO the VMM opened before booting,
//! within its byte budget; a guest flooding its console cannot fill the host's disk.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{kvm_available, probe_path, ApiVm, TestVm};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

fn wait_for_file(path: &Path, text: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let got = std::fs::read(path).unwrap_or_default();
        if String::from_utf8_lossy(&got).contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {text:?} in {path:?} ({} bytes)",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The VMM process's CPU time (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

#[test]
fn bad_serial_bodies_and_outputs_get_a_clear_400() {
    let vm = ApiVm::start(&[]);
    let mut c = vm.client();
    let r = c.put("/serial", json!({"x": 1}));
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("unknown field `x`"), "{}", r.body);
    let link = vm.dir.path().join("link");
    std::os::unix::fs::symlink(vm.dir.path().join("target"), &link).unwrap();
    let r = c.put("/serial", json!({"serial_out_path": link}));
    assert_eq!(r.status, 400);
    assert!(
        r.fault().starts_with("Cannot open the serial output ")
            && r.fault().contains("os error 40"),
        "{}",
        r.body
    );
    assert!(!vm.dir.path().join("target").exists());
    let r = c.put(
        "/serial",
        json!({"rate_limiter": {"size": 0, "refill_time": 100}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = c.put("/serial", json!({}));
    assert_eq!(r.status, 204, "{}", r.body);
}

#[test]
fn a_guest_flooding_its_console_to_a_file_is_held_to_the_budget_with_bounded_cpu() {
    if !kvm_available(
        "a_guest_flooding_its_console_to_a_file_is_held_to_the_budget_with_bounded_cpu",
    ) {
        return;
    }
    let mut vm = ApiVm::start(&[]);
    let mut c = vm.client();
    let out = vm.dir.path().join("console.log");
    // 1 KiB at once, then 1 KiB per 100 ms (10 KiB/s: less than the probe prints).
    let (size, refill_ms) = (1024u64, 100u64);
    let r = c.put(
        "/serial",
        json!({"serial_out_path": out, "rate_limiter": {"size": size, "refill_time": refill_ms}}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600,
        "created before boot, 0600"
    );
    let r = c.put(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put(
        "/boot-source",
        json!({"kernel_image_path": probe_path(),
               "boot_args": "console=ttyS0 probe.run=console-flood"}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    wait_for_file(&out, "probe: console-flood ok");
    wait_for_file(&out, "[palisade: serial output over its rate limit");
    let pid = vm.running.child.id();
    let (t0, cpu0) = (Instant::now(), cpu_time(pid));
    let len0 = std::fs::metadata(&out).unwrap().len();
    // A window long enough to see the budget, measured (not a synchronisation).
    std::thread::sleep(Duration::from_secs(2));
    let len1 = std::fs::metadata(&out).unwrap().len();
    let (elapsed, cpu) = (t0.elapsed(), cpu_time(pid) - cpu0);
    let allowed = size + size * elapsed.as_millis() as u64 / refill_ms + 4096;
    println!(
        "console flood: {} bytes in {elapsed:?} (allowed {allowed}), VMM CPU {cpu:?}",
        len1 - len0
    );
    assert!(len1 - len0 <= allowed, "{} > {allowed}", len1 - len0);
    assert!(len1 > len0, "the console still gets its budget");
    // The vCPU thread spins (the guest is busy); the VMM as a whole stays near one core.
    assert!(
        cpu.as_secs_f64() <= elapsed.as_secs_f64() * 1.5,
        "VMM CPU {cpu:?} over {elapsed:?}"
    );
    assert!(vm.running.stdout().is_empty() || !vm.running.stdout().contains("probe: flood"));
    let r = c.put("/serial", json!({"serial_out_path": out}));
    assert_eq!(r.status, 400, "after start: {}", r.body);
    vm.running.child.kill().unwrap();
    let _ = vm.running.child.wait();
}

#[test]
fn a_config_file_serial_section_sends_the_console_to_its_file_not_stdout() {
    if !kvm_available("a_config_file_serial_section_sends_the_console_to_its_file_not_stdout") {
        return;
    }
    let mut vm = TestVm::probe("hello", 1, 64);
    let out = vm.dir.path().join("console.log");
    vm.config["serial"] = json!({"serial_out_path": out});
    let run = vm.run(TIMEOUT);
    run.assert_success();
    let console = std::fs::read_to_string(&out).unwrap();
    assert!(console.contains("probe: hello ok"), "{console}");
    assert!(!run.stdout.contains("probe: hello"), "{}", run.stdout);
}

#[test]
fn a_serial_output_put_before_a_snapshot_load_gets_the_restored_guests_console() {
    if !kvm_available("a_serial_output_put_before_a_snapshot_load_gets_the_restored_guests_console")
    {
        return;
    }
    let snapshots = tempfile::tempdir().unwrap();
    let dir = snapshots.path().to_str().unwrap();
    let (state, mem) = (snapshots.path().join("state"), snapshots.path().join("mem"));
    let mut vm = ApiVm::start(&["--snapshot-dir", dir]);
    let mut c = vm.client();
    let r = c.put(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put(
        "/boot-source",
        json!({"kernel_image_path": probe_path(), "boot_args": "console=ttyS0 probe.run=ticker"}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.wait_for_output("probe: tick 2\n", TIMEOUT);
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.child.kill().unwrap();
    let _ = vm.running.child.wait();

    let clone = ApiVm::start(&["--snapshot-dir", dir]);
    let mut c = clone.client();
    let out = clone.dir.path().join("console.log");
    let r = c.put("/serial", json!({"serial_out_path": out}));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put(
        "/snapshot/load",
        json!({"snapshot_path": state,
               "mem_backend": {"backend_type": "File", "backend_path": mem},
               "resume_vm": true}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    wait_for_file(&out, "probe: tick ");
    assert!(!clone.running.stdout().contains("probe: tick"));
    let mut clone = clone;
    clone.running.child.kill().unwrap();
    let _ = clone.running.child.wait();
}
