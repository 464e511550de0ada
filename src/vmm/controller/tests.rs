//! The controller before boot, driven through `handle` as the api thread drives it, without
//! KVM: what is refused is not recorded, and the refusals carry Firecracker's messages.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::json;

use super::rules::VmState;
use super::Controller;
use crate::seccomp::SeccompFilters;
use crate::vmm::action::{ActionError, VmmAction, VmmData};
use crate::vmm::builder::BuildOptions;
use crate::vstate::exit::{ExitCode, ExitRequest};

/// A controller before boot, without KVM, seccomp or Landlock (also the balloon tests').
pub(super) fn controller() -> Controller {
    Controller::new(
        "test".into(),
        BuildOptions {
            snapshot_key: None,
            snapshot_dirs: Vec::new(),
            boot_timer: false,
            exit: Arc::new(ExitRequest::new().unwrap()),
            seccomp: Arc::new(SeccompFilters::disabled()),
            landlock: false,
        },
    )
}

fn from<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap()
}

fn full_config(c: &mut Controller) -> serde_json::Value {
    match c.handle(VmmAction::GetFullConfig).unwrap() {
        VmmData::FullConfig(v) => serde_json::to_value(v).unwrap(),
        other => panic!("GET /vm/config answered {other:?}"),
    }
}

#[test]
fn before_boot_runtime_actions_are_refused_and_queries_answered() {
    let mut c = controller();
    assert_eq!(c.state(), VmState::NotStarted);
    for action in [
        VmmAction::Pause,
        VmmAction::Resume,
        VmmAction::SendCtrlAltDel,
        VmmAction::FlushMetrics,
    ] {
        assert!(matches!(
            c.handle(action),
            Err(ActionError::NotSupportedPreBoot)
        ));
    }
    let VmmData::InstanceInfo(info) = c.handle(VmmAction::GetInstanceInfo).unwrap() else {
        panic!("GET / answered no InstanceInfo");
    };
    assert_eq!(info.state, "Not started");
    assert!(matches!(
        c.handle(VmmAction::InstanceStart),
        Err(ActionError::MissingKernelConfig)
    ));
}

#[test]
fn a_boot_source_whose_kernel_does_not_open_is_refused_and_not_recorded() {
    let mut c = controller();
    let r = c.handle(VmmAction::PutBootSource(from(
        json!({"kernel_image_path": "/nonexistent/vmlinux"}),
    )));
    assert_eq!(
        r.unwrap_err().fault_message(),
        "The kernel file cannot be opened: No such file or directory (os error 2)"
    );
    assert_eq!(
        full_config(&mut c)["boot-source"],
        json!({"kernel_image_path": "", "initrd_path": null, "boot_args": null})
    );
    let kernel = tempfile::NamedTempFile::new().unwrap();
    let r = c.handle(VmmAction::PutBootSource(from(
        json!({"kernel_image_path": kernel.path()}),
    )));
    assert!(matches!(r, Ok(VmmData::Empty)));
    assert!(full_config(&mut c)["boot-source"]["kernel_image_path"].is_string());
}

#[test]
fn a_network_interface_whose_tap_does_not_open_is_refused_and_not_recorded() {
    let mut c = controller();
    let r = c.handle(VmmAction::PutNetworkInterface(Box::new(from(
        json!({"iface_id": "eth0", "host_dev_name": "lo"}),
    ))));
    let message = r.unwrap_err().fault_message();
    assert!(
        message.starts_with("Could not create the network device: Open tap device failed: "),
        "{message}"
    );
    assert_eq!(full_config(&mut c)["network-interfaces"], json!([]));
}

#[test]
fn a_config_file_boot_source_that_does_not_open_fails_start_as_a_bad_configuration() {
    let mut c = controller();
    c.set_resources(crate::config::VmResources {
        boot_source: Some(from(json!({"kernel_image_path": "/nonexistent/vmlinux"}))),
        ..Default::default()
    });
    let e = c.start_vm().unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::BadConfiguration);
    let e = c.handle(VmmAction::InstanceStart).unwrap_err();
    assert_eq!(e.status(), 400);
    assert_eq!(
        e.fault_message(),
        "Start microvm error: The kernel file cannot be opened: No such file or directory \
         (os error 2) (boot-source kernel_image_path /nonexistent/vmlinux)"
    );
}

#[test]
fn answers_serialise_to_firecrackers_bodies() {
    let mut c = controller();
    let version = c.handle(VmmAction::GetVersion).unwrap();
    let body: serde_json::Value = serde_json::to_value(&version).unwrap();
    assert_eq!(body["firecracker_version"], body["palisade_version"]);
    assert!(body["firecracker_version"].is_string());
    let info = serde_json::to_value(c.handle(VmmAction::GetInstanceInfo).unwrap()).unwrap();
    assert_eq!(info["app_name"], "Palisade");
    assert_eq!(info["state"], "Not started");
    let machine = serde_json::to_value(c.handle(VmmAction::GetMachineConfig).unwrap()).unwrap();
    assert!(machine["vcpu_count"].is_u64(), "{machine}");
}

#[test]
fn a_machine_config_out_of_range_is_refused_with_its_reason() {
    let mut c = controller();
    let e = c
        .handle(VmmAction::PatchMachineConfig(from(
            json!({"vcpu_count": 0}),
        )))
        .unwrap_err();
    assert!(matches!(
        e,
        ActionError::Config(crate::config::ConfigError::Machine(_))
    ));
    assert!(
        e.fault_message()
            .starts_with("Invalid machine-config: vcpu_count must be between 1 and "),
        "{}",
        e.fault_message()
    );
}

#[test]
fn the_kernel_opened_at_put_is_the_one_the_build_uses() {
    let mut c = controller();
    let kernel = tempfile::NamedTempFile::new().unwrap();
    let r = c.handle(VmmAction::PutBootSource(from(
        json!({"kernel_image_path": kernel.path()}),
    )));
    assert!(matches!(r, Ok(VmmData::Empty)));
    // Gone from its path: a build that opened it again would refuse the boot source.
    kernel.close().unwrap();
    let e = c.start_vm().unwrap_err();
    assert!(
        !matches!(e, super::StartError::BootSource { .. }),
        "the build reopened the kernel: {e}"
    );
}

#[test]
fn before_boot_the_firewall_query_answers_the_configured_rules() {
    let mut c = controller();
    let mut interfaces = crate::devices::virtio::net::config::InterfaceList::default();
    interfaces
        .insert(from(json!({
            "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:0a:00:00:02"
        })))
        .unwrap();
    c.set_resources(crate::config::VmResources {
        network_interfaces: interfaces,
        ..Default::default()
    });
    let answer = c.handle(VmmAction::GetFirewall("eth0".into())).unwrap();
    let body = serde_json::to_value(&answer).unwrap();
    assert_eq!(body["iface_id"], "eth0");
    assert_eq!(
        body["rules"],
        serde_json::to_value(palisade_firewall::FirewallConfig::mac_only()).unwrap()
    );
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    assert!(matches!(
        c.handle(VmmAction::GetFirewall("eth1".into())),
        Err(ActionError::NoSuchInterface { .. })
    ));
}

/// A controller whose resources came from a config file with interface `eth0` (no tap is
/// opened before boot).
fn controller_with_eth0() -> Controller {
    let mut c = controller();
    let config = crate::config::VmConfig::from_json(
        r#"{"boot-source": {"kernel_image_path": "/k"},
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}]}"#,
    )
    .unwrap();
    c.set_resources(config.into());
    c
}

fn get_mmds(c: &mut Controller) -> serde_json::Value {
    match c.handle(VmmAction::GetMmds).unwrap() {
        VmmData::MmdsValue(v) => v,
        other => panic!("GET /mmds answered {other:?}"),
    }
}

#[test]
fn mmds_before_boot_answers_as_firecracker() {
    let mut c = controller();
    // An empty store answers {}; a PATCH before any PUT is refused.
    assert_eq!(get_mmds(&mut c), json!({}));
    let e = c.handle(VmmAction::PatchMmds(json!({"a": 1}))).unwrap_err();
    assert_eq!(e.status(), 400);
    assert_eq!(
        e.fault_message(),
        "MMDS error: The MMDS data store is not initialized."
    );
    c.handle(VmmAction::PutMmds(json!({"a": {"b": 1}})))
        .unwrap();
    c.handle(VmmAction::PatchMmds(json!({"a": {"c": 2}, "d": 3})))
        .unwrap();
    assert_eq!(get_mmds(&mut c), json!({"a": {"b": 1, "c": 2}, "d": 3}));
}

#[test]
fn mmds_over_the_size_limit_is_413_and_changes_nothing() {
    let mut c = controller();
    c.set_mmds_size_limit(16);
    c.handle(VmmAction::PutMmds(json!({"a": 1}))).unwrap();
    for action in [
        VmmAction::PutMmds(json!({"a": "0123456789abcdef"})),
        VmmAction::PatchMmds(json!({"b": "0123456789abcdef"})),
    ] {
        let e = c.handle(action).unwrap_err();
        assert_eq!(e.status(), 413);
        assert_eq!(
            e.fault_message(),
            "MMDS limit exceeded error: The MMDS patch request doesn't fit."
        );
    }
    assert_eq!(get_mmds(&mut c), json!({"a": 1}));
}

#[test]
fn mmds_config_names_configured_interfaces_and_shows_in_vm_config() {
    let mut c = controller_with_eth0();
    assert_eq!(full_config(&mut c)["mmds-config"], json!(null));
    let e = c
        .handle(VmmAction::PutMmdsConfig(from(
            json!({"network_interfaces": ["eth1"]}),
        )))
        .unwrap_err();
    assert_eq!(
        e.fault_message(),
        "MMMDS config error: The list of network interface IDs provided contains at least one \
         ID that does not correspond to any existing network interface."
    );
    assert_eq!(full_config(&mut c)["mmds-config"], json!(null));
    c.handle(VmmAction::PutMmdsConfig(from(
        json!({"network_interfaces": ["eth0"]}),
    )))
    .unwrap();
    assert_eq!(
        full_config(&mut c)["mmds-config"],
        json!({"version": "V2", "network_interfaces": ["eth0"],
               "ipv4_address": "169.254.169.254", "imds_compat": false, "hop_limit": 1,
               "rate_limiter": {"ops": {"size": 100, "refill_time": 2000}}})
    );
    // Palisade's extensions: refused with Firecracker's prefix, the config kept.
    let e = c
        .handle(VmmAction::PutMmdsConfig(from(
            json!({"network_interfaces": ["eth0"], "hop_limit": 0}),
        )))
        .unwrap_err();
    assert_eq!(
        e.fault_message(),
        "MMMDS config error: The MMDS hop limit 0 is out of range: give a value between 1 and \
         255."
    );
    c.handle(VmmAction::PutMmdsConfig(from(json!({
        "network_interfaces": ["eth0"], "hop_limit": 64,
        "rate_limiter": {"ops": {"size": 5, "refill_time": 1000}}
    }))))
    .unwrap();
    let shown = &full_config(&mut c)["mmds-config"];
    assert_eq!(shown["hop_limit"], 64);
    assert_eq!(
        shown["rate_limiter"],
        json!({"ops": {"size": 5, "refill_time": 1000}})
    );
}

#[test]
fn a_serial_output_like_the_logger_may_precede_a_snapshot_load() {
    let mut c = controller();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("console");
    c.handle(VmmAction::PutSerial(Box::new(from(
        json!({"serial_out_path": out}),
    ))))
    .unwrap();
    assert!(out.exists(), "opened (created) at PUT, before any filter");
    let load = VmmAction::LoadSnapshot(Box::new(
        from::<crate::vmm::snapshot::LoadSnapshotBody>(json!({
            "snapshot_path": dir.path().join("none"),
            "mem_file_path": dir.path().join("none")
        }))
        .into_params()
        .unwrap(),
    ));
    let err = c.handle(load).unwrap_err().to_string();
    assert!(!err.contains("after configuring boot-specific"), "{err}");
}
