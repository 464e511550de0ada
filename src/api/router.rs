//! Firecracker's API routes: (method, path, body) -> a typed VMM action, or the 4xx that
//! Firecracker gives. The route table is the single source of truth: the OpenAPI document is
//! checked against it by a test.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::http::Request;
use super::response::Response;
use crate::arch::x86_64::cpu_template::CustomCpuTemplate;
use crate::config::{
    valid_resource_id, BlockDeviceConfig, BlockDeviceUpdate, BootSourceConfig, EntropyConfig,
    MachineConfig, MachineConfigUpdate,
};
use crate::devices::virtio::balloon::{
    BalloonConfig, BalloonStatsUpdate, BalloonUpdate, StartHintingCmd,
};
use crate::devices::virtio::net::config::{NetworkInterfaceConfig, NetworkInterfaceUpdate};
use crate::devices::virtio::vsock::config::{VsockDeviceConfig, VsockUpdate};
use crate::logger::LoggerConfig;
use crate::metrics::MetricsConfig;
use crate::metrics::METRICS;
use crate::mmds::MmdsConfig;
use crate::vmm::action::VmmAction;
use crate::vmm::snapshot::{CreateSnapshotParams, LoadSnapshotBody};

/// Every (method, path template) the API serves.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/version"),
    ("GET", "/machine-config"),
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/cpu-config"),
    ("PUT", "/drives/{drive_id}"),
    ("PATCH", "/drives/{drive_id}"),
    ("PUT", "/network-interfaces/{iface_id}"),
    ("PATCH", "/network-interfaces/{iface_id}"),
    ("GET", "/network-interfaces/{iface_id}/firewall"),
    ("PUT", "/actions"),
    ("PUT", "/logger"),
    ("PUT", "/metrics"),
    ("GET", "/vm/config"),
    ("PATCH", "/vm"),
    ("PUT", "/entropy"),
    ("PUT", "/serial"),
    ("PUT", "/vsock"),
    ("PUT", "/vsock/{vsock_id}"),
    ("PATCH", "/vsock"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/snapshot/load"),
    ("PUT", "/mmds"),
    ("PATCH", "/mmds"),
    ("GET", "/mmds"),
    ("PUT", "/mmds/config"),
    ("PUT", "/balloon"),
    ("GET", "/balloon"),
    ("PATCH", "/balloon"),
    ("GET", "/balloon/statistics"),
    ("PATCH", "/balloon/statistics"),
    ("PATCH", "/balloon/hinting/start"),
    ("PATCH", "/balloon/hinting/stop"),
    ("GET", "/balloon/hinting/status"),
];

/// Routes whose body is optional (Firecracker's): a missing or empty body is the default.
const OPTIONAL_BODY: [(&str, &str); 2] = [
    ("PATCH", "/balloon/hinting/start"),
    ("PATCH", "/balloon/hinting/stop"),
];

/// Firecracker's routes Palisade answers with a 400 that names what is missing and why
/// (method, path template, reason). The OpenAPI document lists them with that answer.
pub const REFUSED: &[(&str, &str, &str)] = &[
    ("PUT", "/pmem/{id}", PMEM),
    ("PATCH", "/pmem/{id}", PMEM),
    ("DELETE", "/pmem/{id}", PMEM),
    ("GET", "/hotplug/memory", HOTPLUG),
    ("PUT", "/hotplug/memory", HOTPLUG),
    ("PATCH", "/hotplug/memory", HOTPLUG),
    ("DELETE", "/drives/{drive_id}", UNPLUG),
    ("DELETE", "/network-interfaces/{iface_id}", UNPLUG),
];

const PMEM: &str = "virtio-pmem devices are not supported by Palisade: give the guest a \
                    drive (virtio-blk) instead.";
const HOTPLUG: &str = "Memory hot-plug (virtio-mem) is not supported by Palisade: size guest \
                       memory with machine-config mem_size_mib and take it back with the \
                       balloon.";
const UNPLUG: &str = "Device hot-unplug is not supported by Palisade: its devices are \
                      virtio-mmio, fixed when the guest boots (Firecracker unplugs PCI \
                      devices only).";

/// What a request turns into.
#[derive(Debug, PartialEq)]
pub enum Routed {
    /// An action for the VMM thread.
    Action(VmmAction),
    /// An answer the api thread gives itself (errors, features not built yet).
    Reply(Response),
}

fn bad_request(message: &str) -> Routed {
    Routed::Reply(Response::fault(400, message))
}

/// Finds the route template `path` matches, with its parameter (the last `{}` segment).
fn match_template(path: &str) -> Option<(&'static str, Option<String>)> {
    ROUTES
        .iter()
        .find_map(|(_, template)| matches_template(template, path).map(|p| (*template, p)))
}

/// Whether `path` fits `template`: `Some` with the parameter (the last `{}` segment) if so.
/// Walks both segment by segment, so the ~50 templates tried per request allocate nothing.
fn matches_template(template: &str, path: &str) -> Option<Option<String>> {
    let mut parts = template.trim_start_matches('/').split_terminator('/');
    let mut segments = path.trim_start_matches('/').split_terminator('/');
    let mut param = None;
    loop {
        match (parts.next(), segments.next()) {
            (None, None) => return Some(param.map(str::to_string)),
            (Some(part), Some(seg)) if part.starts_with('{') && !seg.is_empty() => {
                param = Some(seg)
            }
            (Some(part), Some(seg)) if part == seg => {}
            _ => return None,
        }
    }
}

/// The reason Palisade refuses a Firecracker route it does not implement.
fn refused(method: &str, path: &str) -> Option<&'static str> {
    REFUSED
        .iter()
        .find(|(m, template, _)| *m == method && matches_template(template, path).is_some())
        .map(|(_, _, why)| *why)
}

/// A body that is not the expected JSON: Firecracker's words around serde's reason.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Routed> {
    serde_json::from_slice(body).map_err(|e| {
        bad_request(&format!(
            "An error occurred when deserializing the json body of a request: {e}."
        ))
    })
}

/// `PUT /actions` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Deserialize)]
enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// `PATCH /vm` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: VmState,
}

#[derive(Deserialize)]
enum VmState {
    Paused,
    Resumed,
}

/// Firecracker's answer to a resource id it refuses.
const INVALID_ID: &str =
    "Invalid ID. It should contain only alphanumeric characters or '_' and be at most 64 characters long.";

/// The id from the path, checked.
fn path_id(param: Option<&str>) -> Result<&str, Routed> {
    param
        .filter(|id| valid_resource_id(id))
        .ok_or_else(|| bad_request(INVALID_ID))
}

/// The body of a request on `/{kind}/{id}`: parsed, and the id it names (`body_id`) equal to
/// the path's.
fn parse_body_for<T: DeserializeOwned>(
    body: &[u8],
    param: Option<&str>,
    body_id: fn(&T) -> &str,
) -> Result<Box<T>, Routed> {
    let parsed: T = parse_body(body)?;
    if path_id(param)? != body_id(&parsed) {
        return Err(bad_request(
            "The id from the path does not match the id from the body!",
        ));
    }
    Ok(Box::new(parsed))
}

/// Counts a served request in Firecracker's per-route metrics.
pub fn count_request(method: &str, path: &str, ok: bool) {
    let Some((template, _)) = match_template(path) else {
        return;
    };
    let (count, fails) = match (method, template) {
        ("GET", "/") => (&METRICS.get_api_requests.instance_info_count, None),
        ("GET", "/version") => (&METRICS.get_api_requests.vmm_version_count, None),
        ("GET", "/machine-config") => (&METRICS.get_api_requests.machine_cfg_count, None),
        ("GET", "/vm/config") => (&METRICS.get_api_requests.vm_config_count, None),
        ("GET", "/network-interfaces/{iface_id}/firewall") => {
            (&METRICS.get_api_requests.firewall_count, None)
        }
        ("PUT", "/actions") => (
            &METRICS.put_api_requests.actions_count,
            Some(&METRICS.put_api_requests.actions_fails),
        ),
        ("PUT", "/boot-source") => (
            &METRICS.put_api_requests.boot_source_count,
            Some(&METRICS.put_api_requests.boot_source_fails),
        ),
        ("PUT", "/cpu-config") => (
            &METRICS.put_api_requests.cpu_cfg_count,
            Some(&METRICS.put_api_requests.cpu_cfg_fails),
        ),
        ("PUT", "/drives/{drive_id}") => (
            &METRICS.put_api_requests.drive_count,
            Some(&METRICS.put_api_requests.drive_fails),
        ),
        ("PUT", "/logger") => (
            &METRICS.put_api_requests.logger_count,
            Some(&METRICS.put_api_requests.logger_fails),
        ),
        ("PUT", "/machine-config") => (
            &METRICS.put_api_requests.machine_cfg_count,
            Some(&METRICS.put_api_requests.machine_cfg_fails),
        ),
        ("PUT", "/metrics") => (
            &METRICS.put_api_requests.metrics_count,
            Some(&METRICS.put_api_requests.metrics_fails),
        ),
        ("PUT", "/network-interfaces/{iface_id}") => (
            &METRICS.put_api_requests.network_count,
            Some(&METRICS.put_api_requests.network_fails),
        ),
        ("PUT", "/entropy") => (
            &METRICS.put_api_requests.entropy_count,
            Some(&METRICS.put_api_requests.entropy_fails),
        ),
        ("PUT", "/serial") => (
            &METRICS.put_api_requests.serial_count,
            Some(&METRICS.put_api_requests.serial_fails),
        ),
        ("PUT", "/vsock" | "/vsock/{vsock_id}") => (
            &METRICS.put_api_requests.vsock_count,
            Some(&METRICS.put_api_requests.vsock_fails),
        ),
        ("PATCH", "/vsock") => (
            &METRICS.patch_api_requests.vsock_count,
            Some(&METRICS.patch_api_requests.vsock_fails),
        ),
        ("GET", "/mmds") => (&METRICS.get_api_requests.mmds_count, None),
        ("PUT", "/mmds" | "/mmds/config") => (
            &METRICS.put_api_requests.mmds_count,
            Some(&METRICS.put_api_requests.mmds_fails),
        ),
        ("PATCH", "/mmds") => (
            &METRICS.patch_api_requests.mmds_count,
            Some(&METRICS.patch_api_requests.mmds_fails),
        ),
        ("PATCH", "/drives/{drive_id}") => (
            &METRICS.patch_api_requests.drive_count,
            Some(&METRICS.patch_api_requests.drive_fails),
        ),
        ("PATCH", "/network-interfaces/{iface_id}") => (
            &METRICS.patch_api_requests.network_count,
            Some(&METRICS.patch_api_requests.network_fails),
        ),
        ("PATCH", "/machine-config") => (
            &METRICS.patch_api_requests.machine_cfg_count,
            Some(&METRICS.patch_api_requests.machine_cfg_fails),
        ),
        ("PATCH", "/vm") => (
            &METRICS.patch_api_requests.vm_count,
            Some(&METRICS.patch_api_requests.vm_fails),
        ),
        _ => return,
    };
    count.inc();
    if let (false, Some(fails)) = (ok, fails) {
        fails.inc();
    }
}

/// Routes one request.
pub fn route(req: &Request) -> Routed {
    let invalid = || {
        bad_request(&format!(
            "Invalid request method and/or path: {} {}.",
            req.method, req.path
        ))
    };
    if let Some(why) = refused(&req.method, &req.path) {
        return bad_request(why);
    }
    let Some((template, param)) = match_template(&req.path) else {
        return invalid();
    };
    if !ROUTES.contains(&(req.method.as_str(), template)) {
        return invalid();
    }
    let body = match (req.method.as_str(), &req.body) {
        ("GET", Some(_)) => return bad_request("GET request cannot have a body."),
        ("GET", None) => &[][..],
        (method, None) if OPTIONAL_BODY.contains(&(method, template)) => &[][..],
        ("PUT", None) => return bad_request("Empty PUT request."),
        ("PATCH", None) => return bad_request("Empty PATCH request."),
        (_, Some(body)) => body.as_slice(),
        (_, None) => return invalid(),
    };
    match route_body(req.method.as_str(), template, param.as_deref(), body) {
        Ok(routed) | Err(routed) => routed,
    }
}

fn route_body(
    method: &str,
    template: &str,
    param: Option<&str>,
    body: &[u8],
) -> Result<Routed, Routed> {
    let action = match (method, template) {
        ("GET", "/") => VmmAction::GetInstanceInfo,
        ("GET", "/version") => VmmAction::GetVersion,
        ("GET", "/machine-config") => VmmAction::GetMachineConfig,
        ("GET", "/vm/config") => VmmAction::GetFullConfig,
        ("PUT", "/machine-config") => {
            VmmAction::PutMachineConfig(parse_body::<MachineConfig>(body)?)
        }
        ("PATCH", "/machine-config") => {
            let update: MachineConfigUpdate = parse_body(body)?;
            if update.is_empty() {
                return Err(bad_request("Empty PATCH request."));
            }
            VmmAction::PatchMachineConfig(update)
        }
        ("PUT", "/boot-source") => VmmAction::PutBootSource(parse_body::<BootSourceConfig>(body)?),
        ("PUT", "/cpu-config") => {
            VmmAction::PutCpuConfig(Box::new(parse_body::<CustomCpuTemplate>(body)?))
        }
        ("PUT", "/actions") => match parse_body::<ActionBody>(body)?.action_type {
            ActionType::InstanceStart => VmmAction::InstanceStart,
            ActionType::SendCtrlAltDel => VmmAction::SendCtrlAltDel,
            ActionType::FlushMetrics => VmmAction::FlushMetrics,
        },
        ("PUT", "/logger") => VmmAction::PutLogger(parse_body::<LoggerConfig>(body)?),
        ("PUT", "/metrics") => VmmAction::PutMetrics(parse_body::<MetricsConfig>(body)?),
        ("PATCH", "/vm") => match parse_body::<VmStateBody>(body)?.state {
            VmState::Paused => VmmAction::Pause,
            VmState::Resumed => VmmAction::Resume,
        },
        ("PUT", "/drives/{drive_id}") => {
            VmmAction::PutDrive(parse_body_for(body, param, |d: &BlockDeviceConfig| {
                &d.drive_id
            })?)
        }
        ("PATCH", "/drives/{drive_id}") => {
            VmmAction::PatchDrive(parse_body_for(body, param, |u: &BlockDeviceUpdate| {
                &u.drive_id
            })?)
        }
        ("PUT", "/network-interfaces/{iface_id}") => VmmAction::PutNetworkInterface(
            parse_body_for(body, param, |i: &NetworkInterfaceConfig| &i.iface_id)?,
        ),
        ("PATCH", "/network-interfaces/{iface_id}") => VmmAction::PatchNetworkInterface(
            parse_body_for(body, param, |u: &NetworkInterfaceUpdate| &u.iface_id)?,
        ),
        ("GET", "/network-interfaces/{iface_id}/firewall") => {
            VmmAction::GetFirewall(path_id(param)?.to_string())
        }
        ("PUT", "/entropy") => VmmAction::PutEntropy(parse_body::<EntropyConfig>(body)?),
        ("PUT", "/serial") => VmmAction::PutSerial(Box::new(parse_body(body)?)),
        // Firecracker ignores what follows `/vsock`, and the body's deprecated `vsock_id`.
        ("PUT", "/vsock" | "/vsock/{vsock_id}") => {
            let config: VsockDeviceConfig = parse_body(body)?;
            config.validate().map_err(|e| bad_request(&e.to_string()))?;
            VmmAction::PutVsock(Box::new(config))
        }
        ("PATCH", "/vsock") => {
            let update: VsockUpdate = parse_body(body)?;
            if let Some(policy) = &update.policy {
                policy.validate().map_err(|e| bad_request(&e.to_string()))?;
            }
            VmmAction::PatchVsock(Box::new(update))
        }
        ("PUT", "/balloon") => VmmAction::PutBalloon(parse_body::<BalloonConfig>(body)?),
        ("GET", "/balloon") => VmmAction::GetBalloon,
        ("PATCH", "/balloon") => VmmAction::PatchBalloon(parse_body::<BalloonUpdate>(body)?),
        ("GET", "/balloon/statistics") => VmmAction::GetBalloonStats,
        ("PATCH", "/balloon/statistics") => {
            VmmAction::PatchBalloonStats(parse_body::<BalloonStatsUpdate>(body)?)
        }
        ("PATCH", "/balloon/hinting/start") => match body.is_empty() {
            true => VmmAction::StartBalloonHinting(StartHintingCmd::default()),
            false => VmmAction::StartBalloonHinting(parse_body(body)?),
        },
        // Firecracker ignores a body here.
        ("PATCH", "/balloon/hinting/stop") => VmmAction::StopBalloonHinting,
        ("GET", "/balloon/hinting/status") => VmmAction::GetBalloonHintingStatus,
        ("GET", "/mmds") => VmmAction::GetMmds,
        ("PUT", "/mmds") => VmmAction::PutMmds(parse_body::<Value>(body)?),
        ("PATCH", "/mmds") => VmmAction::PatchMmds(parse_body::<Value>(body)?),
        ("PUT", "/mmds/config") => {
            VmmAction::PutMmdsConfig(Box::new(parse_body::<MmdsConfig>(body)?))
        }
        ("PUT", "/snapshot/create") => {
            let params: CreateSnapshotParams = parse_body(body)?;
            params.validate().map_err(|e| bad_request(&e.to_string()))?;
            VmmAction::CreateSnapshot(Box::new(params))
        }
        ("PUT", "/snapshot/load") => {
            let params = parse_body::<LoadSnapshotBody>(body)?
                .into_params()
                .map_err(|e| bad_request(&e.to_string()))?;
            VmmAction::LoadSnapshot(Box::new(params))
        }
        _ => return Err(bad_request("Invalid request method and/or path.")),
    };
    Ok(Routed::Action(action))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: Option<&str>) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.map(|b| b.as_bytes().to_vec()),
            close: false,
        }
    }

    fn fault(r: Routed) -> String {
        match r {
            Routed::Reply(resp) => {
                assert_eq!(resp.status, 400);
                let v: serde_json::Value = serde_json::from_str(&resp.body.unwrap()).unwrap();
                v["fault_message"].as_str().unwrap().to_string()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn firecracker_boot_sequence_routes_to_actions() {
        let r = route(&req(
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path":"/k","boot_args":"console=ttyS0"}"#),
        ));
        assert!(matches!(r, Routed::Action(VmmAction::PutBootSource(_))));
        let r = route(&req(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#),
        ));
        assert_eq!(r, Routed::Action(VmmAction::InstanceStart));
        let r = route(&req("PATCH", "/vm", Some(r#"{"state":"Paused"}"#)));
        assert_eq!(r, Routed::Action(VmmAction::Pause));
        assert_eq!(
            route(&req("GET", "/", None)),
            Routed::Action(VmmAction::GetInstanceInfo)
        );
        assert_eq!(
            route(&req("GET", "/vm/config", None)),
            Routed::Action(VmmAction::GetFullConfig)
        );
    }

    #[test]
    fn unknown_paths_and_methods_get_firecrackers_message() {
        assert_eq!(
            fault(route(&req("GET", "/nope", None))),
            "Invalid request method and/or path: GET /nope."
        );
        assert_eq!(
            fault(route(&req("DELETE", "/machine-config", None))),
            "Invalid request method and/or path: DELETE /machine-config."
        );
        assert!(fault(route(&req("PUT", "/drives", Some("{}")))).starts_with("Invalid request"));
    }

    #[test]
    fn bodies_are_checked() {
        assert_eq!(
            fault(route(&req("GET", "/", Some("{}")))),
            "GET request cannot have a body."
        );
        assert_eq!(
            fault(route(&req("PUT", "/actions", None))),
            "Empty PUT request."
        );
        assert_eq!(
            fault(route(&req("PATCH", "/machine-config", Some("{}")))),
            "Empty PATCH request."
        );
        let msg = fault(route(&req(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"Explode"}"#),
        )));
        assert!(msg.contains("unknown variant `Explode`"), "{msg}");
        let msg = fault(route(&req(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":1,"mem_size_mib":128,"extra":1}"#),
        )));
        assert!(msg.contains("unknown field `extra`"), "{msg}");
        let msg = fault(route(&req(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":1}"#),
        )));
        // Firecracker's answer to the same body, word for word.
        assert_eq!(
            msg,
            "An error occurred when deserializing the json body of a request: \
             missing field `mem_size_mib` at line 1 column 16."
        );
        // PUT /cpu-config too (captured from the Firecracker binary with the same body).
        assert_eq!(
            fault(route(&req("PUT", "/cpu-config", Some("not json")))),
            "An error occurred when deserializing the json body of a request: \
             expected ident at line 1 column 2."
        );
        let msg = fault(route(&req("PUT", "/boot-source", Some("{not json"))));
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn drive_and_entropy_bodies_become_typed_actions() {
        let body = r#"{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true,"is_read_only":false,
                       "cache_type":"Writeback","rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}"#;
        match route(&req("PUT", "/drives/rootfs", Some(body))) {
            Routed::Action(VmmAction::PutDrive(d)) => {
                assert_eq!(d.drive_id, "rootfs");
                assert!(d.is_root_device);
                assert_eq!(d.cache_type, crate::config::CacheType::Writeback);
                assert_eq!(d.rate_limiter.unwrap().bandwidth.unwrap().size, 1000);
            }
            other => panic!("{other:?}"),
        }
        let patch = r#"{"drive_id":"data","path_on_host":"/new"}"#;
        assert!(matches!(
            route(&req("PATCH", "/drives/data", Some(patch))),
            Routed::Action(VmmAction::PatchDrive(_))
        ));
        assert!(matches!(
            route(&req("PUT", "/entropy", Some("{}"))),
            Routed::Action(VmmAction::PutEntropy(_))
        ));
    }

    #[test]
    fn drive_ids_are_checked_against_the_path() {
        let body = r#"{"drive_id":"other","path_on_host":"/r","is_root_device":false,"is_read_only":false}"#;
        let msg = fault(route(&req("PUT", "/drives/rootfs", Some(body))));
        assert_eq!(
            msg,
            "The id from the path does not match the id from the body!"
        );
        let body = r#"{"drive_id":"bad-id","path_on_host":"/r","is_root_device":false,"is_read_only":false}"#;
        let msg = fault(route(&req("PUT", "/drives/bad-id", Some(body))));
        assert!(msg.starts_with("Invalid ID"), "{msg}");
        // A drive without path_on_host reaches the controller, which names what is missing.
        assert!(matches!(
            route(&req("PUT", "/drives/d", Some(r#"{"drive_id":"d"}"#))),
            Routed::Action(VmmAction::PutDrive(_))
        ));
        let msg = fault(route(&req("PUT", "/entropy", Some(r#"{"rate":1}"#))));
        assert!(msg.contains("unknown field `rate`"), "{msg}");
    }

    #[test]
    fn network_interface_bodies_become_typed_actions() {
        let msg = fault(route(&req(
            "GET",
            "/network-interfaces/bad-id!/firewall",
            None,
        )));
        assert!(msg.starts_with("Invalid ID"), "{msg}");
        let body = r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:02",
                       "firewall": {"allowed_ips": ["10.0.0.2/32"]}}"#;
        assert!(matches!(
            route(&req("PUT", "/network-interfaces/eth0", Some(body))),
            Routed::Action(VmmAction::PutNetworkInterface(_))
        ));
        let msg = fault(route(&req("PUT", "/network-interfaces/eth1", Some(body))));
        assert!(msg.contains("does not match"), "{msg}");
        let patch = r#"{"iface_id": "eth0", "firewall": {"default_egress": "deny"}}"#;
        assert!(matches!(
            route(&req("PATCH", "/network-interfaces/eth0", Some(patch))),
            Routed::Action(VmmAction::PatchNetworkInterface(_))
        ));
        assert!(matches!(
            route(&req("GET", "/network-interfaces/eth0/firewall", None)),
            Routed::Action(VmmAction::GetFirewall(id)) if id == "eth0"
        ));
    }

    #[test]
    fn vsock_bodies_become_typed_actions_as_firecracker_accepts_them() {
        let body = r#"{"vsock_id":"vsock0","guest_cid":3,"uds_path":"/tmp/v.sock"}"#;
        for path in ["/vsock", "/vsock/vsock0", "/vsock/anything"] {
            match route(&req("PUT", path, Some(body))) {
                Routed::Action(VmmAction::PutVsock(c)) => {
                    assert_eq!((c.guest_cid, c.uds_path.as_str()), (3, "/tmp/v.sock"));
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        let patch = r#"{"policy":{"guest_initiated":[],"max_connections":2}}"#;
        assert!(matches!(
            route(&req("PATCH", "/vsock", Some(patch))),
            Routed::Action(VmmAction::PatchVsock(_))
        ));
    }

    #[test]
    fn bad_vsock_bodies_get_a_clear_400() {
        let cases = [
            (r#"{"guest_cid":2,"uds_path":"/v"}"#, "Invalid guest_cid 2"),
            (r#"{"guest_cid":3,"uds_path":""}"#, "Invalid uds_path"),
            (r#"{"guest_cid":3}"#, "missing field `uds_path`"),
            (
                r#"{"guest_cid":3,"uds_path":"/v","x":1}"#,
                "unknown field `x`",
            ),
            (
                r#"{"guest_cid":3,"uds_path":"/v","policy":{"max_connections":0}}"#,
                "Invalid max_connections 0",
            ),
            (
                r#"{"guest_cid":3,"uds_path":"/v","policy":{"host_initiated":["9-1"]}}"#,
                "Invalid vsock port range '9-1'",
            ),
        ];
        for (body, want) in cases {
            let msg = fault(route(&req("PUT", "/vsock", Some(body))));
            assert!(msg.contains(want), "{body}: {msg}");
        }
        let msg = fault(route(&req(
            "PATCH",
            "/vsock",
            Some(r#"{"policy":{"max_connections":5000}}"#),
        )));
        assert!(msg.contains("Invalid max_connections 5000"), "{msg}");
        let msg = fault(route(&req("PATCH", "/vsock", Some(r#"{"cid":3}"#))));
        assert!(msg.contains("unknown field `cid`"), "{msg}");
    }

    #[test]
    fn the_openapi_document_has_exactly_the_routers_routes() {
        let doc: serde_yaml::Value = serde_yaml::from_str(include_str!("openapi.yaml")).unwrap();
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_mapping().unwrap() {
            for method in item.as_mapping().unwrap().keys() {
                let method = method.as_str().unwrap().to_uppercase();
                if ["GET", "PUT", "PATCH", "POST", "DELETE"].contains(&method.as_str()) {
                    documented.insert((method, path.as_str().unwrap().to_string()));
                }
            }
        }
        let routed: std::collections::BTreeSet<(String, String)> = ROUTES
            .iter()
            .copied()
            .chain(REFUSED.iter().map(|(m, p, _)| (*m, *p)))
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        let missing: Vec<_> = routed.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&routed).collect();
        assert!(
            missing.is_empty(),
            "routes missing from openapi.yaml: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "openapi.yaml paths the router lacks: {extra:?}"
        );
    }

    #[test]
    fn the_openapi_firewall_status_names_every_key_the_answer_has() {
        let doc: serde_yaml::Value = serde_yaml::from_str(include_str!("openapi.yaml")).unwrap();
        let schemas = &doc["components"]["schemas"];
        let keys = |schema: &str| -> Vec<String> {
            let mut keys: Vec<String> = schemas[schema]["properties"]
                .as_mapping()
                .unwrap()
                .keys()
                .map(|k| k.as_str().unwrap().to_string())
                .collect();
            keys.sort();
            keys
        };
        let config = serde_json::from_str("{}").unwrap();
        let firewall =
            palisade_firewall::Firewall::new("eth0", &config, None, std::time::Instant::now())
                .unwrap();
        let answer = serde_json::to_value(firewall.status()).unwrap();
        let answered = |v: &serde_json::Value| -> Vec<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        assert_eq!(keys("FirewallStatus"), answered(&answer));
        assert_eq!(keys("FirewallCounters"), answered(&answer["counters"]));
        assert_eq!(
            keys("FirewallDirectionCounters"),
            answered(&answer["counters"]["ingress"])
        );
    }

    #[test]
    fn the_openapi_full_config_names_every_section_get_vm_config_answers() {
        let doc: serde_yaml::Value = serde_yaml::from_str(include_str!("openapi.yaml")).unwrap();
        let documented: Vec<String> = doc["components"]["schemas"]["FullVmConfiguration"]
            ["properties"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        let answer =
            serde_json::to_value(crate::config::VmResources::default().to_full_config()).unwrap();
        let answered: Vec<String> = answer.as_object().unwrap().keys().cloned().collect();
        let (mut documented_sorted, mut answered_sorted) = (documented, answered);
        documented_sorted.sort();
        answered_sorted.sort();
        assert_eq!(documented_sorted, answered_sorted);
    }

    #[test]
    fn firecrackers_routes_palisade_lacks_are_refused_by_name() {
        for (method, template, why) in REFUSED {
            let path = template
                .replace("{id}", "p1")
                .replace("{drive_id}", "d1")
                .replace("{iface_id}", "eth0");
            let body = (*method != "GET" && *method != "DELETE").then_some("{}");
            assert_eq!(
                fault(route(&req(method, &path, body))),
                *why,
                "{method} {path}"
            );
        }
        // Close to a refused path is still an unknown one.
        let msg = fault(route(&req("DELETE", "/drives", None)));
        assert!(
            msg.starts_with("Invalid request method and/or path"),
            "{msg}"
        );
    }

    #[test]
    fn every_route_is_reachable() {
        for (method, template) in ROUTES {
            let path = template
                .replace("{drive_id}", "d1")
                .replace("{iface_id}", "eth0")
                .replace("{vsock_id}", "vsock0");
            let body = match (*method, *template) {
                ("GET", _) => None,
                ("PUT", t) if t.starts_with("/vsock") => {
                    Some(r#"{"guest_cid":3,"uds_path":"/v.sock"}"#)
                }
                ("PUT", "/snapshot/create") => {
                    Some(r#"{"snapshot_path":"/s","mem_file_path":"/m"}"#)
                }
                ("PUT", "/snapshot/load") => Some(r#"{"snapshot_path":"/s","mem_file_path":"/m"}"#),
                ("PUT", "/mmds/config") => Some(r#"{"network_interfaces":["eth0"]}"#),
                _ => Some("{}"),
            };
            if let Routed::Reply(r) = route(&req(method, &path, body)) {
                let text = r.body.unwrap();
                assert!(
                    !text.contains("Invalid request method"),
                    "{method} {path}: {text}"
                );
            }
        }
    }
}
