//! Firecracker-style metrics, flushed as one JSON object per line to the file or named pipe
//! given by `--metrics-path` or `PUT /metrics` ([`writer`]).
//!
//! One pattern for every component:
//! - a process-wide component (API, vCPUs, serial port, i8042, logger, virtio-mmio transports)
//!   has a group in [`METRICS`] ([`groups`]) and increments its counters itself;
//! - a device has its own group ([`devices`]), created as an `Arc` by whoever creates the
//!   device, shared with the device and registered under the device's key in
//!   `METRICS.devices` ([`DeviceRegistry`]), which reports it as a top-level group.
//!
//! Every line starts with `utc_timestamp_ms`, then `id` and `properties` when configured, then
//! the groups, with Firecracker's names. To add a process-wide group: declare it with
//! `metric_group!` in `groups.rs` and add a field of its type to [`Metrics`]; to add a device
//! kind: declare its group in `devices.rs` and give [`DeviceMetrics`] a variant for it.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Declares a metrics group: a struct of `pub` metric fields that serialises as a JSON object
/// with the field names as keys, and a `const fn new()` that builds each field with its type's
/// `new()`, or with the expression after `=`.
macro_rules! metric_group {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$field_meta:meta])* $field:ident: $ty:ty $(= $init:expr)?,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, ::serde::Serialize)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl $name {
            /// Every metric at zero.
            pub const fn new() -> Self {
                Self {
                    $($field: metric_group!(@init $ty $(, $init)?),)*
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }
    };
    (@init $ty:ty) => { <$ty>::new() };
    (@init $ty:ty, $init:expr) => { $init };
}

mod counter;
mod devices;
mod groups;
mod line;
mod registry;
mod writer;

pub use counter::{Counter, Gauge};
pub use devices::{
    BalloonDeviceMetrics, BlockDeviceMetrics, DeviceCoreCounters, EntropyDeviceMetrics,
    NetDeviceMetrics, VsockDeviceMetrics,
};
pub use groups::{
    ApiServerMetrics, GetApiRequestsMetrics, I8042Metrics, LatencyMetrics, LoggerMetrics,
    PalisadeMetrics, PatchApiRequestsMetrics, PutApiRequestsMetrics, SeccompMetrics, SignalMetrics,
    UartMetrics, VcpuMetrics, VirtioTransportMetrics,
};
pub use line::{InstanceIdField, Properties, UtcTimestampMs};
pub use registry::{DeviceMetrics, DeviceRegistry};
pub use writer::{flush, init, init_from_config};

/// Every metric of the process.
pub static METRICS: Metrics = Metrics::new();

/// Errors of metrics setup and flushing.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `--metrics-path` or `PUT /metrics` was already applied (Firecracker's message).
    #[error("Reinitialization of metrics not allowed.")]
    AlreadyInitialized,
    /// The metrics file or named pipe cannot be opened.
    #[error("Cannot open the metrics output '{}'", path.display())]
    Open {
        /// The path as given.
        path: PathBuf,
        /// Why open(2) failed.
        #[source]
        source: io::Error,
    },
    /// The metrics cannot be turned into JSON.
    #[error("Cannot serialise the metrics")]
    Serialize(#[source] serde_json::Error),
    /// The pipe is full: the unwritten rest of the line waits for the next flush.
    #[error("The metrics output is full; the line is written at the next flush")]
    OutputFull,
    /// A write failed for another reason; the line waits for the next flush.
    #[error("Failed to write metrics")]
    Write(#[source] io::Error),
}

/// The body of `PUT /metrics` and the `metrics` section of a config file (Firecracker's
/// `Metrics`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// File or named pipe the JSON lines are written to.
    pub metrics_path: PathBuf,
    /// Whether every line carries the instance id (`--id`) as a top-level `id`.
    #[serde(default)]
    pub emit_id: bool,
    /// Operator-defined pairs every line carries under a top-level `properties`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, String>>,
}

metric_group! {
    /// Everything Palisade reports; one JSON object per flush.
    pub struct Metrics {
        /// Time of the flush (Firecracker's first key).
        utc_timestamp_ms: UtcTimestampMs,
        /// `id`, when `emit_id` is set.
        #[serde(flatten)]
        id: InstanceIdField,
        /// `properties`, when set.
        #[serde(flatten)]
        properties: Properties,
        /// The process and its API.
        api_server: ApiServerMetrics,
        /// GET requests.
        get_api_requests: GetApiRequestsMetrics,
        /// PUT requests.
        put_api_requests: PutApiRequestsMetrics,
        /// PATCH requests.
        patch_api_requests: PatchApiRequestsMetrics,
        /// Pause and resume durations.
        latencies_us: LatencyMetrics,
        /// Lost log and metrics lines.
        logger: LoggerMetrics,
        /// Seccomp.
        seccomp: SeccompMetrics,
        /// Signals the process received.
        signals: SignalMetrics,
        /// vCPU exits.
        vcpu: VcpuMetrics,
        /// The serial port (COM1).
        uart: UartMetrics,
        /// The i8042 keyboard controller.
        i8042: I8042Metrics,
        /// Palisade's own: API callers and the audit log.
        palisade: PalisadeMetrics,
        /// One group per device, registered by whoever creates it: `block_<drive_id>`,
        /// `net_<iface_id>`, `entropy`.
        #[serde(flatten)]
        devices: DeviceRegistry,
        /// The virtio-mmio transports.
        virtio: VirtioTransportMetrics,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde_json::Value;

    use super::*;
    use crate::logger;

    fn to_json(metrics: &Metrics) -> Value {
        serde_json::to_value(metrics).unwrap()
    }

    #[test]
    fn a_line_has_the_timestamp_and_every_group() {
        let metrics = Metrics::new();
        let json = to_json(&metrics);
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        for group in [
            "utc_timestamp_ms",
            "api_server",
            "get_api_requests",
            "put_api_requests",
            "patch_api_requests",
            "latencies_us",
            "logger",
            "seccomp",
            "signals",
            "vcpu",
            "uart",
            "i8042",
            "palisade",
        ] {
            assert!(keys.iter().any(|k| k == group), "{group} missing: {keys:?}");
        }
        assert!(json.get("id").is_none() && json.get("properties").is_none());
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ts = json["utc_timestamp_ms"].as_u64().unwrap();
        assert!(ts <= now_ms && now_ms - ts < 60_000, "{ts} vs {now_ms}");
        assert_eq!(json["put_api_requests"]["machine_cfg_fails"], 0);
        assert_eq!(json["uart"]["write_count"], 0);
        // The logger's own totals are global and other tests lose lines on purpose.
        assert!(json["logger"]["missed_log_count"].is_u64());
    }

    #[test]
    fn counters_report_deltas_and_gauges_their_last_value() {
        let metrics = Metrics::new();
        metrics.uart.write_count.add(3);
        metrics.vcpu.exit_io_out.inc();
        metrics.latencies_us.pause_vm.store(17);
        let first = to_json(&metrics);
        assert_eq!(first["uart"]["write_count"], 3);
        assert_eq!(first["vcpu"]["exit_io_out"], 1);
        assert_eq!(first["latencies_us"]["pause_vm"], 17);

        metrics.uart.write_count.inc();
        let second = to_json(&metrics);
        assert_eq!(second["uart"]["write_count"], 1);
        assert_eq!(second["vcpu"]["exit_io_out"], 0);
        assert_eq!(second["latencies_us"]["pause_vm"], 17);
        assert_eq!(metrics.uart.write_count.count(), 4);
    }

    #[test]
    fn id_and_properties_appear_when_configured() {
        let metrics = Metrics::new();
        metrics.id.enable();
        metrics
            .properties
            .set(BTreeMap::from([(
                "customer_id".to_string(),
                "1234".to_string(),
            )]))
            .unwrap();
        let line = serde_json::to_string(&metrics).unwrap();
        assert!(line.starts_with(r#"{"utc_timestamp_ms":"#), "{line}");
        let json: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["id"], logger::instance_id());
        assert_eq!(json["properties"]["customer_id"], "1234");
        assert!(metrics.properties.set(BTreeMap::new()).is_err());
    }

    #[test]
    fn put_metrics_body_parses_and_refuses_unknown_fields() {
        let cfg: MetricsConfig = serde_json::from_str(r#"{"metrics_path": "m.fifo"}"#).unwrap();
        assert_eq!(cfg.metrics_path, PathBuf::from("m.fifo"));
        assert!(!cfg.emit_id);
        assert_eq!(cfg.properties, None);
        let full: MetricsConfig = serde_json::from_str(
            r#"{"metrics_path": "m", "emit_id": true, "properties": {"a": "b"}}"#,
        )
        .unwrap();
        assert!(full.emit_id);
        assert_eq!(full.properties.unwrap()["a"], "b");
        let unknown = serde_json::from_str::<MetricsConfig>(r#"{"metrics_path": "m", "x": 1}"#);
        assert!(unknown.unwrap_err().to_string().contains("unknown field"));
        let missing = serde_json::from_str::<MetricsConfig>(r#"{"emit_id": true}"#);
        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("missing field `metrics_path`"));
    }

    #[test]
    fn registered_devices_sit_between_palisade_and_virtio_as_in_firecracker() {
        let metrics = Metrics::new();
        let drive = Arc::new(BlockDeviceMetrics::new());
        metrics
            .devices
            .register(BlockDeviceMetrics::key("rootfs"), drive.clone());
        drive.write_count.inc();
        let line = serde_json::to_string(&metrics).unwrap();
        let at = |key: &str| line.find(&format!("\"{key}\":")).unwrap();
        assert!(at("palisade") < at("block_rootfs"), "{line}");
        assert!(at("block_rootfs") < at("entropy") && at("entropy") < at("virtio"));
        let json: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["block_rootfs"]["write_count"], 1);
    }
}
