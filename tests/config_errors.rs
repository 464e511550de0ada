//! Bad input gets a one-line error naming the problem and a documented non-zero status.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use common::{kvm_available, GuestRun, TestVm};
use serde_json::json;

const BAD_CONFIGURATION: i32 = 152;
const ARG_PARSING: i32 = 153;
const HOST_UNSUPPORTED: i32 = 3;

fn run_config(config: serde_json::Value) -> GuestRun {
    TestVm::new(config).run(Duration::from_secs(30))
}

fn assert_refused(run: &GuestRun, code: i32, needle: &str) {
    assert_eq!(run.status.code(), Some(code), "stderr:\n{}", run.stderr);
    let errors: Vec<_> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("Error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line:\n{}", run.stderr);
    assert!(
        errors[0].contains(needle),
        "{:?} lacks {needle:?}",
        errors[0]
    );
    assert!(run.stdout.is_empty(), "the guest ran:\n{}", run.stdout);
}

/// A config whose every check runs before the kernel is opened, so no guest is needed.
fn probe_config() -> serde_json::Value {
    json!({
        "boot-source": {"kernel_image_path": "/nonexistent/kernel"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
    })
}

#[test]
fn missing_kernel_is_refused() {
    let run = run_config(json!({"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}));
    assert_refused(&run, BAD_CONFIGURATION, "/nonexistent/vmlinux");
}

#[test]
fn a_missing_kernel_or_initrd_gets_firecrackers_message_as_through_the_api() {
    let run = run_config(json!({"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}));
    assert_refused(
        &run,
        BAD_CONFIGURATION,
        "The kernel file cannot be opened: No such file or directory (os error 2)",
    );
    let kernel = std::env::current_exe().unwrap();
    let run = run_config(json!({"boot-source": {"kernel_image_path": kernel,
                                                "initrd_path": "/nonexistent/initrd"}}));
    assert_refused(
        &run,
        BAD_CONFIGURATION,
        "The initrd file cannot be opened due to invalid path or invalid permissions.",
    );
}

/// The tap is opened before the kernel is loaded, as at `PUT /network-interfaces`: the kernel
/// here is not loadable, so only the early check names the tap.
#[test]
fn a_tap_that_cannot_be_opened_is_refused_before_the_kernel_is_loaded() {
    let kernel = std::env::current_exe().unwrap();
    let mut config = probe_config();
    config["boot-source"]["kernel_image_path"] = json!(kernel);
    config["network-interfaces"] = json!([{"iface_id": "eth0", "host_dev_name": "lo"}]);
    assert_refused(
        &run_config(config),
        BAD_CONFIGURATION,
        "Could not create the network device: Open tap device failed: ",
    );
}

#[test]
fn a_kernel_that_is_not_elf_or_bzimage_is_refused() {
    let vm = TestVm::new(json!({}));
    let junk = vm.dir.path().join("junk");
    std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
    let run = run_config(json!({"boot-source": {"kernel_image_path": junk}}));
    assert_refused(&run, BAD_CONFIGURATION, "Cannot load the kernel");
}

#[test]
fn json_syntax_errors_give_line_and_column() {
    let vm = TestVm::new(json!({}));
    let path = vm.dir.path().join("broken.json");
    std::fs::write(
        &path,
        "{\n  \"boot-source\": {\n    \"kernel_image_path\": \"/k\",\n  }\n}",
    )
    .unwrap();
    let out = std::process::Command::new(common::palisade_bin())
        .args(["--no-api", "--config-file"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(BAD_CONFIGURATION));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 4 column 3"), "{stderr}");
}

#[test]
fn unknown_fields_are_refused() {
    let mut config = probe_config();
    config["machine-config"]["vcpus"] = json!(2);
    let run = run_config(config);
    assert_refused(&run, BAD_CONFIGURATION, "unknown field `vcpus`");
}

#[test]
fn firecracker_sections_palisade_does_not_build_are_refused_by_name_with_why() {
    for (section, value, why) in [
        (
            "pmem",
            json!([{"id": "p", "path_on_host": "/p"}]),
            "virtio-pmem",
        ),
        (
            "memory-hotplug",
            json!({"total_size_mib": 1024}),
            "virtio-mem",
        ),
    ] {
        let mut config = probe_config();
        config[section] = value;
        let run = run_config(config);
        assert_refused(
            &run,
            BAD_CONFIGURATION,
            &format!("The config section '{section}' is not supported by Palisade: "),
        );
        assert!(run.stderr.contains(why), "{}", run.stderr);
    }
    let mut config = probe_config();
    config["drives"] = json!([{"drive_id": "vu", "is_root_device": false, "socket": "/vu.sock"}]);
    assert_refused(
        &run_config(config),
        BAD_CONFIGURATION,
        "drive vu: vhost-user drives ('socket') are not supported by Palisade",
    );
    let mut config = probe_config();
    config["network-interfaces"] =
        json!([{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 67}]);
    assert_refused(
        &run_config(config),
        BAD_CONFIGURATION,
        "Could not create the network device: MTU 67 is out of range [68, 65535]",
    );
}

#[test]
fn a_missing_drive_file_and_a_bad_network_interface_are_refused_by_name() {
    let mut config = probe_config();
    config["drives"] = json!([{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true, "is_read_only": false}]);
    assert_refused(
        &run_config(config),
        BAD_CONFIGURATION,
        "drive rootfs: cannot open /r",
    );
    let mut config = probe_config();
    config["network-interfaces"] = json!([{"iface_id": "eth0", "host_dev_name": "a/b"}]);
    assert_refused(
        &run_config(config),
        BAD_CONFIGURATION,
        "Invalid host_dev_name 'a/b'",
    );
}

#[test]
fn vcpu_count_outside_1_to_32_is_refused() {
    for count in [0, 33] {
        let mut config = probe_config();
        config["machine-config"]["vcpu_count"] = json!(count);
        assert_refused(&run_config(config), BAD_CONFIGURATION, "vcpu_count");
    }
}

#[test]
fn memory_too_small_or_larger_than_the_host_is_refused() {
    for mib in [1u64, 1 << 30] {
        let mut config = probe_config();
        config["machine-config"]["mem_size_mib"] = json!(mib);
        assert_refused(&run_config(config), BAD_CONFIGURATION, "mem_size_mib");
    }
}

#[test]
fn running_without_no_api_or_config_is_an_argument_error() {
    let out = std::process::Command::new(common::palisade_bin())
        .arg("--no-api")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(ARG_PARSING));
    let out = std::process::Command::new(common::palisade_bin())
        .arg("--bogus-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(ARG_PARSING));
}

#[test]
fn a_host_without_usable_kvm_is_reported() {
    if !kvm_available("a_host_without_usable_kvm_is_reported") {
        return;
    }
    // Hide /dev/kvm behind /dev/null in a private mount namespace (needs root). The kernel
    // exists, so that the missing KVM is the only problem.
    let mut config = probe_config();
    config["boot-source"]["kernel_image_path"] = common::probe_path().to_string_lossy().into();
    let vm = TestVm::new(config);
    let cmd = vm.command();
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let script = format!(
        "mount --bind /dev/null /dev/kvm && exec {} {}",
        common::palisade_bin(),
        args.join(" ")
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    if !out.status.success() && out.status.code() != Some(HOST_UNSUPPORTED) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("mount") || stderr.contains("unshare") {
            common::skip::skip(
                "a_host_without_usable_kvm_is_reported",
                &format!("needs root ({stderr})"),
            );
            return;
        }
    }
    assert_eq!(out.status.code(), Some(HOST_UNSUPPORTED), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("KVM"), "{stderr}");
}
