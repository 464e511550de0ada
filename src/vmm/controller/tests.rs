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
use crate::vstate::exit::ExitRequest;

fn controller() -> Controller {
    Controller::new(
        "test".into(),
        BuildOptions {
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
        VmmData::FullConfig(v) => v,
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
    assert_eq!(full_config(&mut c)["boot-source"], json!(null));
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
