//! The probe guest boots under the real VMM and KVM, runs its scenarios and powers off.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use common::{kvm_available, TestVm};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The mem scenario saw `mib` MiB of RAM in the e820 map and tested it.
fn assert_mib(run: &common::GuestRun, mib: usize) {
    let detail = run.assert_probe_ok("mem");
    assert!(
        detail.split_whitespace().any(|f| f == format!("mib={mib}")),
        "mem: {detail}"
    );
}

#[test]
fn probe_hello_boots_logs_boot_time_and_powers_off() {
    if !kvm_available("probe_hello_boots_logs_boot_time_and_powers_off") {
        return;
    }
    let run = TestVm::probe("hello", 1, 64).run(TIMEOUT);
    run.assert_success();
    assert!(run.stdout.contains("probe: ready"), "{}", run.stdout);
    run.assert_probe_ok("hello");
    assert!(
        run.stderr.contains("Guest-boot-time ="),
        "no boot time logged:\n{}",
        run.stderr
    );
}

#[test]
fn probe_sees_every_vcpu_in_mptable_and_cpuid() {
    if !kvm_available("probe_sees_every_vcpu_in_mptable_and_cpuid") {
        return;
    }
    for vcpus in [1u8, 2, 4] {
        let run = TestVm::probe("cpus", vcpus, 64).run(TIMEOUT);
        run.assert_success();
        assert_eq!(run.assert_probe_ok("cpus"), format!("count={vcpus}"));
    }
}

#[test]
fn probe_writes_and_reads_back_all_of_ram() {
    if !kvm_available("probe_writes_and_reads_back_all_of_ram") {
        return;
    }
    for mib in [32usize, 256, 1024] {
        let run = TestVm::probe("mem", 1, mib).run(TIMEOUT);
        run.assert_success();
        assert_mib(&run, mib);
    }
}

#[test]
fn probe_reaches_ram_above_the_4g_gap() {
    if !kvm_available("probe_reaches_ram_above_the_4g_gap") {
        return;
    }
    // 3 GiB below the gap and 256 MiB above 4 GiB.
    let run = TestVm::probe("mem", 2, 3328).run(Duration::from_secs(180));
    run.assert_success();
    assert_mib(&run, 3328);
}

#[test]
fn several_scenarios_run_in_order_with_four_vcpus() {
    if !kvm_available("several_scenarios_run_in_order_with_four_vcpus") {
        return;
    }
    let run = TestVm::probe("hello,cpus,mem", 4, 128).run(TIMEOUT);
    run.assert_success();
    run.assert_probe_ok("hello");
    assert_eq!(run.assert_probe_ok("cpus"), "count=4");
    assert_mib(&run, 128);
    let hello = run.stdout.find("probe: hello").unwrap();
    let mem = run.stdout.find("probe: mem").unwrap();
    assert!(hello < mem);
}

#[test]
fn idle_guest_keeps_running_until_the_vmm_is_stopped() {
    if !kvm_available("idle_guest_keeps_running_until_the_vmm_is_stopped") {
        return;
    }
    let vm = TestVm::probe("idle", 2, 64);
    let mut running = vm.spawn();
    running.wait_for_output("probe: idle ok", TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        running.child.try_wait().unwrap().is_none(),
        "the idle guest ended by itself:\n{}",
        running.stderr()
    );
    let run = running.kill();
    assert!(!run.status.success());
}

#[test]
fn unknown_ports_and_mmio_read_as_all_ones_and_the_guest_goes_on() {
    if !kvm_available("unknown_ports_and_mmio_read_as_all_ones_and_the_guest_goes_on") {
        return;
    }
    let run = TestVm::probe("unknown-io,hello", 1, 64).run(TIMEOUT);
    run.assert_success();
    assert_eq!(
        run.assert_probe_ok("unknown-io"),
        "port=0xff mmio=0xffffffff"
    );
    run.assert_probe_ok("hello");
}

#[test]
fn a_triple_fault_ends_the_vm_in_order() {
    if !kvm_available("a_triple_fault_ends_the_vm_in_order") {
        return;
    }
    let run = TestVm::probe("triple-fault,hello", 2, 64).run(TIMEOUT);
    run.assert_success();
    assert!(
        run.stdout.contains("probe: triple-fault now"),
        "{}",
        run.stdout
    );
    assert!(run.probe_result("hello").is_none(), "{}", run.stdout);
    assert!(run.stderr.contains("triple fault"), "{}", run.stderr);
}
