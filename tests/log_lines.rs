//! The log lines tools written for Firecracker wait for appear, at the same moments.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use common::{kvm_available, probe_path, ApiVm, TestVm};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Waits for `text` in the VMM's stderr (its log): the common helper, with this file's
/// timeout.
fn wait_for_log(vm: &ApiVm, text: &str) {
    vm.running.wait_for_log(text, TIMEOUT);
}

#[test]
fn startup_and_api_lines_are_firecrackers() {
    let vm = ApiVm::start(&[]);
    wait_for_log(&vm, "API server started.");
    let log = vm.running.stderr();
    let running = log.find("Running Firecracker").expect(&log);
    let listening = log
        .find(&format!("Listening on API socket ({:?}).", vm.sock()))
        .expect(&log);
    let started = log.find("API server started.").expect(&log);
    assert!(running < listening && listening < started, "{log}");
}

#[test]
fn a_config_file_boot_logs_firecrackers_started_line() {
    if !kvm_available("a_config_file_boot_logs_firecrackers_started_line") {
        return;
    }
    let run = TestVm::probe("hello", 1, 64).run(TIMEOUT);
    run.assert_success();
    assert!(
        run.stderr
            .contains("Successfully started microvm that was configured from one single json"),
        "{}",
        run.stderr
    );
    let started = run.stderr.find("Successfully started microvm").unwrap();
    let exiting = run
        .stderr
        .find("Firecracker exiting successfully. exit_code=0")
        .expect(&run.stderr);
    assert!(started < exiting, "{}", run.stderr);
}

#[test]
fn a_failed_start_logs_firecrackers_exiting_with_error_line_and_code() {
    let missing = tempfile::tempdir().unwrap();
    let run = TestVm::new(json!({
        "boot-source": {"kernel_image_path": missing.path().join("no-kernel")},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
    }))
    .run(TIMEOUT);
    let code = run.status.code().expect("exited, not killed");
    assert_ne!(code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("Firecracker exiting with error. exit_code={code}")),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("exiting successfully"),
        "{}",
        run.stderr
    );
}

#[test]
fn pause_resume_and_snapshot_actions_log_firecrackers_timing_lines() {
    if !kvm_available("pause_resume_and_snapshot_actions_log_firecrackers_timing_lines") {
        return;
    }
    let snapshots = tempfile::tempdir().unwrap();
    let dir = snapshots.path().to_str().unwrap();
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
    vm.running.wait_for_output("probe: ticker ok", TIMEOUT);
    assert!(!vm.running.stderr().contains("Successfully started microvm"));
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    wait_for_log(&vm, "'pause vm' VMM action took ");
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_path": snapshots.path().join("state"),
               "mem_file_path": snapshots.path().join("mem")}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    wait_for_log(&vm, "'create full snapshot' VMM action took ");
    let r = c.patch("/vm", json!({"state": "Resumed"}));
    assert_eq!(r.status, 204, "{}", r.body);
    wait_for_log(&vm, "'resume vm' VMM action took ");
    vm.running.child.kill().unwrap();
    let _ = vm.running.child.wait();
}
