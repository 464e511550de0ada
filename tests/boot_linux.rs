//! A real Linux kernel (the slim test guest from resources/guest) boots under Palisade to
//! user space and powers off. Slow on hosts without VMX/SVM: generous timeouts, few boots.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use common::{kvm_available, linux_guest_dir, GuestRun, TestVm};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(600);

fn boot_linux(kernel: &str) -> GuestRun {
    let dir = linux_guest_dir();
    let boot_args = std::fs::read_to_string(dir.join("boot_args")).expect("boot_args");
    let vm = TestVm::new(json!({
        "boot-source": {
            "kernel_image_path": dir.join(kernel),
            "initrd_path": dir.join("initramfs.cpio"),
            "boot_args": boot_args.trim(),
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
    }));
    let run = vm.run(TIMEOUT);
    println!(
        "{kernel}: VMM exited after {:.1} s; {}",
        run.elapsed.as_secs_f64(),
        run.stderr
            .lines()
            .find(|l| l.contains("Guest-boot-time"))
            .unwrap_or("no boot time logged")
    );
    run
}

fn assert_reached_user_space(run: &GuestRun) {
    run.assert_success();
    assert!(
        run.stdout.contains("palisade-guest: ready"),
        "the guest never reached its init:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stderr.contains("Guest-boot-time ="),
        "init's boot-timer write was not seen:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("reset through the i8042"),
        "the guest did not power off through the i8042:\n{}",
        run.stderr
    );
}

#[test]
fn linux_vmlinux_boots_to_init_through_pvh_and_powers_off() {
    if !kvm_available("linux_vmlinux_boots_to_init_through_pvh_and_powers_off") {
        return;
    }
    let run = boot_linux("vmlinux");
    assert!(run.stderr.contains("(Pvh)"), "{}", run.stderr);
    assert_reached_user_space(&run);
}

#[test]
fn linux_bzimage_boots_to_init_through_the_64_bit_protocol() {
    if !kvm_available("linux_bzimage_boots_to_init_through_the_64_bit_protocol") {
        return;
    }
    let run = boot_linux("bzImage");
    assert!(run.stderr.contains("(Linux64)"), "{}", run.stderr);
    assert_reached_user_space(&run);
}
