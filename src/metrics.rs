//! Firecracker-style metrics: groups of atomic counters in one static ([`METRICS`]), flushed
//! as one JSON object per line to the file or named pipe given by `--metrics-path` or
//! `PUT /metrics`.
//!
//! A [`Counter`] reports what it counted since the previous flush (Firecracker's
//! `SharedIncMetric`); a [`Gauge`] reports its last stored value (`SharedStoreMetric`). Every
//! line starts with `utc_timestamp_ms`, then `id` and `properties` when configured, then the
//! groups. A flush never blocks: when a full pipe takes only part of a line, or none of it, the
//! rest is kept (one line at most) and written first at the next flush, and no new line is made
//! while it waits, so counts are delayed but never lost and every line reaches the reader whole.
//! Such a flush is counted in `logger.missed_metrics_count`.
//!
//! To add a group: declare it with `metric_group!` and add a field of its type to [`Metrics`].

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::logger::{self, Output};

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

/// A count of events, reported as the increase since the previous flush.
#[derive(Debug, Default)]
pub struct Counter {
    total: AtomicU64,
    reported: AtomicU64,
}

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self {
            total: AtomicU64::new(0),
            reported: AtomicU64::new(0),
        }
    }

    /// Counts one event.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Counts `n` events.
    pub fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// Events counted since the start (not reset by flushes).
    pub fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Serialising a counter is reporting it: the next serialisation starts from here.
impl Serialize for Counter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let total = self.count();
        let delta = total.wrapping_sub(self.reported.load(Ordering::Relaxed));
        let result = serializer.serialize_u64(delta);
        if result.is_ok() {
            self.reported.store(total, Ordering::Relaxed);
        }
        result
    }
}

/// A counter whose running total is kept elsewhere and read through `source` (the logger's
/// lost lines); reported like a [`Counter`], as the increase since the previous flush.
#[derive(Debug)]
pub struct ExternalCounter {
    source: fn() -> u64,
    reported: AtomicU64,
}

impl ExternalCounter {
    /// A counter reading its total from `source`.
    pub const fn new(source: fn() -> u64) -> Self {
        Self {
            source,
            reported: AtomicU64::new(0),
        }
    }

    /// The total since the start.
    pub fn count(&self) -> u64 {
        (self.source)()
    }
}

impl Serialize for ExternalCounter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let total = self.count();
        let delta = total.wrapping_sub(self.reported.load(Ordering::Relaxed));
        let result = serializer.serialize_u64(delta);
        if result.is_ok() {
            self.reported.store(total, Ordering::Relaxed);
        }
        result
    }
}

/// A value that is stored, not counted (a duration, a flag); every flush reports the last one.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// A gauge at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Replaces the value.
    pub fn store(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The last stored value.
    pub fn fetch(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Gauge {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.fetch())
    }
}

/// Serialises as the wall-clock time of the serialisation, in ms since the Unix epoch.
#[derive(Debug, Default)]
pub struct UtcTimestampMs;

impl UtcTimestampMs {
    /// The timestamp field.
    pub const fn new() -> Self {
        Self
    }
}

impl Serialize for UtcTimestampMs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        serializer.serialize_u64(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A flattened `"id": "<instance id>"`, present once `emit_id` enabled it.
#[derive(Debug, Default)]
pub struct InstanceIdField(AtomicBool);

impl InstanceIdField {
    /// Disabled.
    pub const fn new() -> Self {
        Self(AtomicBool::new(false))
    }

    /// Adds `id` to every following line.
    pub fn enable(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Serialize for InstanceIdField {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if self.0.load(Ordering::Relaxed) {
            map.serialize_entry("id", logger::instance_id())?;
        }
        map.end()
    }
}

/// A flattened `"properties": {...}`, present once set.
#[derive(Debug, Default)]
pub struct Properties(OnceLock<BTreeMap<String, String>>);

impl Properties {
    /// Unset.
    pub const fn new() -> Self {
        Self(OnceLock::new())
    }

    /// Sets the pairs, once.
    pub fn set(&self, properties: BTreeMap<String, String>) -> Result<(), MetricsError> {
        self.0
            .set(properties)
            .map_err(|_| MetricsError::AlreadyInitialized)
    }
}

impl Serialize for Properties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(properties) = self.0.get() {
            map.serialize_entry("properties", properties)?;
        }
        map.end()
    }
}

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
        #[derive(Debug, Serialize)]
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
        /// One `block_<drive_id>` group per drive.
        #[serde(flatten)]
        block: DeviceRegistry<BlockDeviceMetrics>,
        /// One `net_<iface_id>` group per network interface.
        #[serde(flatten)]
        net: DeviceRegistry<NetDeviceMetrics>,
        /// The entropy device (virtio-rng).
        entropy: EntropyDeviceMetrics,
        /// The virtio-mmio transports.
        virtio: VirtioTransportMetrics,
    }
}

metric_group! {
    /// The process and its API server (`api_server`).
    pub struct ApiServerMetrics {
        /// From the process start to the API being ready, or to the guest starting with --no-api.
        process_startup_time_us: Gauge,
        /// CPU time the process used for the same span.
        process_startup_time_cpu_us: Gauge,
        /// Responses the api thread could not send to the client.
        sync_response_fails: Counter,
        /// Requests whose result the VMM thread did not send back in time.
        sync_vmm_send_timeout_count: Counter,
    }
}

metric_group! {
    /// GET requests per route (`get_api_requests`).
    pub struct GetApiRequestsMetrics {
        /// `GET /`.
        instance_info_count: Counter,
        /// `GET /machine-config`.
        machine_cfg_count: Counter,
        /// `GET /version`.
        vmm_version_count: Counter,
        /// `GET /vm/config` (Palisade's addition; Firecracker does not count it).
        vm_config_count: Counter,
        /// `GET /network-interfaces/{iface_id}/firewall` (Palisade's addition).
        firewall_count: Counter,
    }
}

metric_group! {
    /// PUT requests and their failures per route (`put_api_requests`).
    pub struct PutApiRequestsMetrics {
        /// `PUT /actions`.
        actions_count: Counter,
        /// `PUT /actions` that failed.
        actions_fails: Counter,
        /// `PUT /boot-source`.
        boot_source_count: Counter,
        /// `PUT /boot-source` that failed.
        boot_source_fails: Counter,
        /// `PUT /drives/{drive_id}`.
        drive_count: Counter,
        /// `PUT /drives/{drive_id}` that failed.
        drive_fails: Counter,
        /// `PUT /logger`.
        logger_count: Counter,
        /// `PUT /logger` that failed.
        logger_fails: Counter,
        /// `PUT /machine-config`.
        machine_cfg_count: Counter,
        /// `PUT /machine-config` that failed.
        machine_cfg_fails: Counter,
        /// `PUT /metrics`.
        metrics_count: Counter,
        /// `PUT /metrics` that failed.
        metrics_fails: Counter,
        /// `PUT /network-interfaces/{iface_id}`.
        network_count: Counter,
        /// `PUT /network-interfaces/{iface_id}` that failed.
        network_fails: Counter,
        /// `PUT /entropy` (Palisade's addition).
        entropy_count: Counter,
        /// `PUT /entropy` that failed (Palisade's addition).
        entropy_fails: Counter,
    }
}

metric_group! {
    /// PATCH requests and their failures per route (`patch_api_requests`).
    pub struct PatchApiRequestsMetrics {
        /// `PATCH /drives/{drive_id}`.
        drive_count: Counter,
        /// `PATCH /drives/{drive_id}` that failed.
        drive_fails: Counter,
        /// `PATCH /network-interfaces/{iface_id}`.
        network_count: Counter,
        /// `PATCH /network-interfaces/{iface_id}` that failed.
        network_fails: Counter,
        /// `PATCH /machine-config`.
        machine_cfg_count: Counter,
        /// `PATCH /machine-config` that failed.
        machine_cfg_fails: Counter,
        /// `PATCH /vm` (Palisade's addition).
        vm_count: Counter,
        /// `PATCH /vm` that failed (Palisade's addition).
        vm_fails: Counter,
    }
}

metric_group! {
    /// Durations of the last pause and resume, in µs (`latencies_us`).
    pub struct LatencyMetrics {
        /// The last `PATCH /vm {"state": "Paused"}`.
        pause_vm: Gauge,
        /// The last `PATCH /vm {"state": "Resumed"}`.
        resume_vm: Gauge,
    }
}

metric_group! {
    /// Lost log and metrics lines (`logger`).
    pub struct LoggerMetrics {
        /// Flushes whose line could not be written at once (it is written later).
        missed_metrics_count: Counter,
        /// The part of `missed_metrics_count` due to an error other than a full pipe.
        metrics_fails: Counter,
        /// Log lines dropped.
        missed_log_count: ExternalCounter = ExternalCounter::new(logger::lost_lines),
        /// The part of `missed_log_count` due to an error other than a full pipe.
        log_fails: ExternalCounter = ExternalCounter::new(logger::failed_writes),
    }
}

metric_group! {
    /// Seccomp (`seccomp`).
    pub struct SeccompMetrics {
        /// Set to 1 when a filter trapped a syscall (SIGSYS), just before the process exits.
        num_faults: Gauge,
    }
}

metric_group! {
    /// Signals (`signals`). As in Firecracker, a deadly signal is a gauge set to 1 by its
    /// handler right before the process exits; SIGPIPE is counted.
    pub struct SignalMetrics {
        /// SIGBUS.
        sigbus: Gauge,
        /// SIGSEGV.
        sigsegv: Gauge,
        /// SIGXFSZ (a file grew over RLIMIT_FSIZE).
        sigxfsz: Gauge,
        /// SIGXCPU (CPU time over RLIMIT_CPU).
        sigxcpu: Gauge,
        /// SIGPIPE.
        sigpipe: Counter,
        /// SIGHUP.
        sighup: Gauge,
        /// SIGILL.
        sigill: Gauge,
        /// SIGSYS (Palisade's addition; Firecracker reports it as `seccomp.num_faults`).
        sigsys: Gauge,
    }
}

metric_group! {
    /// vCPU exits (`vcpu`), summed over all vCPUs.
    pub struct VcpuMetrics {
        /// KVM_EXIT_IO, in.
        exit_io_in: Counter,
        /// KVM_EXIT_IO, out.
        exit_io_out: Counter,
        /// KVM_EXIT_MMIO, read.
        exit_mmio_read: Counter,
        /// KVM_EXIT_MMIO, write.
        exit_mmio_write: Counter,
        /// Failed KVM_RUN calls and unexpected exits.
        failures: Counter,
    }
}

metric_group! {
    /// The serial port (`uart`).
    pub struct UartMetrics {
        /// Errors of the device, such as failed writes to its output.
        error_count: Counter,
        /// Flushes of the output.
        flush_count: Counter,
        /// Reads of invalid offsets or widths.
        missed_read_count: Counter,
        /// Writes to invalid offsets or widths.
        missed_write_count: Counter,
        /// Bytes read by the guest.
        read_count: Counter,
        /// Bytes written by the guest.
        write_count: Counter,
        /// Output bytes dropped over the console's rate limit (Palisade's).
        dropped_bytes: Counter,
    }
}

metric_group! {
    /// The i8042 controller (`i8042`).
    pub struct I8042Metrics {
        /// Errors, such as a failed keyboard interrupt.
        error_count: Counter,
        /// Reads of invalid offsets or widths.
        missed_read_count: Counter,
        /// Writes to invalid offsets or widths.
        missed_write_count: Counter,
        /// Bytes read by the guest.
        read_count: Counter,
        /// Resets the guest asked for.
        reset_count: Counter,
        /// Bytes written by the guest.
        write_count: Counter,
    }
}

metric_group! {
    /// Palisade's own group (`palisade`): API callers and the audit log.
    pub struct PalisadeMetrics {
        /// Connections accepted on the API socket.
        api_connections: Counter,
        /// Connections refused because the peer's uid is not allowed.
        api_refused_peers: Counter,
        /// Requests answered 4xx: malformed HTTP or JSON, unknown paths, wrong methods.
        api_bad_requests: Counter,
        /// Lines written to the audit log.
        audit_lines: Counter,
        /// Audit lines lost (full pipe or write error).
        audit_lost_lines: Counter,
    }
}

metric_group! {
    /// One drive (`block_<drive_id>`): Firecracker's block metrics, plus the hostile-guest
    /// counters.
    pub struct BlockDeviceMetrics {
        /// Activations that failed (the device then needs a reset).
        activate_fails: Counter,
        /// Refused configuration space writes.
        cfg_fails: Counter,
        /// Queue events that found nothing to do.
        no_avail_buffer: Counter,
        /// Failures to read an event or to raise an interrupt.
        event_fails: Counter,
        /// Requests refused as malformed: bad descriptors, short header, wrong direction,
        /// sectors past the end, lengths not a multiple of 512.
        execute_fails: Counter,
        /// Requests answered with an error status (IOERR or UNSUPP), malformed ones included.
        invalid_reqs_count: Counter,
        /// Flush requests.
        flush_count: Counter,
        /// Queue notifications.
        queue_event_count: Counter,
        /// Rate limiter timer expirations.
        rate_limiter_event_count: Counter,
        /// Times a request waited for the rate limiter.
        rate_limiter_throttled_events: Counter,
        /// `PATCH /drives` updates applied.
        update_count: Counter,
        /// `PATCH /drives` updates that failed.
        update_fails: Counter,
        /// Bytes read by the guest.
        read_bytes: Counter,
        /// Bytes written by the guest.
        write_bytes: Counter,
        /// Read requests completed.
        read_count: Counter,
        /// Write requests completed.
        write_count: Counter,
        /// Times the device stopped and asked the driver for a reset (Palisade's).
        needs_reset_count: Counter,
    }
}

/// A device's metrics group that is reported once per device, as `<PREFIX><id>`.
pub trait PerDeviceGroup: Default + Serialize {
    /// Prefix of the top-level key, e.g. `block_`.
    const PREFIX: &'static str;
}

impl PerDeviceGroup for BlockDeviceMetrics {
    const PREFIX: &'static str = "block_";
}

impl PerDeviceGroup for NetDeviceMetrics {
    const PREFIX: &'static str = "net_";
}

/// The groups of every device of one kind, each serialised as a top-level `<PREFIX><id>` key.
#[derive(Debug, Default)]
pub struct DeviceRegistry<T>(Mutex<BTreeMap<String, Arc<T>>>);

impl<T: PerDeviceGroup> DeviceRegistry<T> {
    /// No devices.
    pub const fn new() -> Self {
        Self(Mutex::new(BTreeMap::new()))
    }

    /// The group of device `id`, created on first use.
    pub fn get(&self, id: &str) -> Arc<T> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(id.to_string()).or_default().clone()
    }
}

impl<T: PerDeviceGroup> Serialize for DeviceRegistry<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let devices = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut map = serializer.serialize_map(Some(devices.len()))?;
        for (id, metrics) in devices.iter() {
            map.serialize_entry(&format!("{}{id}", T::PREFIX), metrics.as_ref())?;
        }
        map.end()
    }
}

metric_group! {
    /// The entropy device (`entropy`), Firecracker's names plus the hostile-guest counters.
    pub struct EntropyDeviceMetrics {
        /// Activations that failed.
        activate_fails: Counter,
        /// Failures to read an event or to raise an interrupt.
        entropy_event_fails: Counter,
        /// Queue notifications.
        entropy_event_count: Counter,
        /// Random bytes given to the guest.
        entropy_bytes: Counter,
        /// getrandom(2) failures.
        host_rng_fails: Counter,
        /// Times a request waited for the rate limiter.
        entropy_rate_limiter_throttled: Counter,
        /// Rate limiter timer expirations.
        rate_limiter_event_count: Counter,
        /// Requests refused as malformed (Palisade's).
        execute_fails: Counter,
        /// Times the device asked the driver for a reset (Palisade's).
        needs_reset_count: Counter,
    }
}

metric_group! {
    /// The virtio-mmio transports (`virtio`, Palisade's).
    pub struct VirtioTransportMetrics {
        /// Register accesses ignored: wrong width, wrong state, unknown register.
        mmio_ignored_accesses: Counter,
        /// DRIVER_OK refused: queues outside guest memory or not ready; the device then
        /// needs a reset.
        activate_fails: Counter,
    }
}

metric_group! {
    /// One network interface (`net_<iface_id>`): Firecracker's net metrics, plus the firewall's
    /// drops by reason (Palisade's).
    pub struct NetDeviceMetrics {
        /// Activations that failed.
        activate_fails: Counter,
        /// Refused configuration space writes.
        cfg_fails: Counter,
        /// Failures to read an event or to raise an interrupt.
        event_fails: Counter,
        /// Frames from the tap while the guest had no RX buffer.
        no_rx_avail_buffer: Counter,
        /// Frames too large for the guest's RX buffer, dropped.
        rx_fails: Counter,
        /// Bytes delivered to the guest.
        rx_bytes_count: Counter,
        /// Frames delivered to the guest.
        rx_packets_count: Counter,
        /// Tap readiness events.
        rx_tap_event_count: Counter,
        /// RX queue notifications.
        rx_queue_event_count: Counter,
        /// Times a frame to the guest waited for the RX rate limiter.
        rx_rate_limiter_throttled: Counter,
        /// RX rate limiter timer expirations.
        rx_event_rate_limiter_count: Counter,
        /// Bytes sent by the guest to the tap.
        tx_bytes_count: Counter,
        /// Frames sent by the guest to the tap.
        tx_packets_count: Counter,
        /// Malformed TX chains and failed tap writes.
        tx_fails: Counter,
        /// TX queue notifications.
        tx_queue_event_count: Counter,
        /// Times a guest frame waited for the TX rate limiter.
        tx_rate_limiter_throttled: Counter,
        /// TX rate limiter timer expirations.
        tx_rate_limiter_event_count: Counter,
        /// Guest frames whose source MAC is not `guest_mac` (Firecracker's name; dropped here).
        tx_spoofed_mac_count: Counter,
        /// Guest frames dropped for a virtio-net header that does not match the frame or the
        /// accepted offloads (Palisade's).
        tx_bad_vnet_hdr: Counter,
        /// Frames the firewall dropped from the guest (Palisade's).
        fw_egress_drops: Counter,
        /// Frames the firewall dropped to the guest (Palisade's).
        fw_ingress_drops: Counter,
        /// Drops by reason, both directions (Palisade's).
        fw_spoof_mac: Counter,
        /// See `DropReason::SpoofIp`.
        fw_spoof_ip: Counter,
        /// See `DropReason::SpoofArp`.
        fw_spoof_arp: Counter,
        /// See `DropReason::RogueDhcpRa`.
        fw_rogue_dhcp_ra: Counter,
        /// See `DropReason::RuleDeny`.
        fw_rule_deny: Counter,
        /// See `DropReason::DefaultDeny`.
        fw_default_deny: Counter,
        /// See `DropReason::ConntrackFull`.
        fw_conntrack_full: Counter,
        /// See `DropReason::Fragment`.
        fw_fragment: Counter,
        /// See `DropReason::Malformed`.
        fw_malformed: Counter,
        /// See `DropReason::LengthMismatch`.
        fw_length_mismatch: Counter,
        /// See `DropReason::SourceRoute`.
        fw_source_route: Counter,
        /// Flow-log writes that failed (Palisade's).
        flow_log_fails: Counter,
        /// `PATCH /network-interfaces` updates applied.
        update_count: Counter,
        /// Times the device asked the driver for a reset (Palisade's).
        needs_reset_count: Counter,
    }
}

/// The metrics destination and the unwritten rest of the last line.
#[derive(Debug)]
struct Sink {
    out: Output,
    pending: Vec<u8>,
}

impl Sink {
    fn new(out: Output) -> Self {
        Self {
            out,
            pending: Vec::new(),
        }
    }

    /// Writes what an earlier flush left, then one new line of `metrics`; counts a failure in
    /// `metrics.logger`.
    fn flush(&mut self, metrics: &Metrics) -> Result<(), MetricsError> {
        let result = self.write_pending().and_then(|()| {
            let mut line = serde_json::to_vec(metrics).map_err(MetricsError::Serialize)?;
            line.push(b'\n');
            self.pending = line;
            self.write_pending()
        });
        match &result {
            Ok(()) => {}
            Err(MetricsError::OutputFull) => metrics.logger.missed_metrics_count.inc(),
            Err(_) => {
                metrics.logger.missed_metrics_count.inc();
                metrics.logger.metrics_fails.inc();
            }
        }
        result
    }

    /// Writes `pending` without ever waiting: stops at a full pipe or an error.
    fn write_pending(&mut self) -> Result<(), MetricsError> {
        while !self.pending.is_empty() {
            match self.out.write_once(&self.pending) {
                Ok(0) => return Err(MetricsError::OutputFull),
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(MetricsError::OutputFull)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(MetricsError::Write(e)),
            }
        }
        Ok(())
    }
}

static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();

/// `--metrics-path PATH`: [`init_from_config`] with only the path.
pub fn init(path: &str) -> Result<(), MetricsError> {
    init_from_config(&MetricsConfig {
        metrics_path: PathBuf::from(path),
        emit_id: false,
        properties: None,
    })
}

/// `PUT /metrics` or the config file's `metrics`: opens the file or named pipe (created 0600
/// when missing; a pipe needs no reader yet) and sets `id` and `properties`. Once per process,
/// as in Firecracker; a second call fails with [`MetricsError::AlreadyInitialized`] and opens
/// nothing.
pub fn init_from_config(cfg: &MetricsConfig) -> Result<(), MetricsError> {
    if SINK.get().is_some() {
        return Err(MetricsError::AlreadyInitialized);
    }
    let out = Output::open(&cfg.metrics_path).map_err(|source| MetricsError::Open {
        path: cfg.metrics_path.clone(),
        source,
    })?;
    if let Some(properties) = &cfg.properties {
        METRICS.properties.set(properties.clone())?;
    }
    if cfg.emit_id {
        METRICS.id.enable();
    }
    SINK.set(Mutex::new(Sink::new(out)))
        .map_err(|_| MetricsError::AlreadyInitialized)
}

/// Writes one line of [`METRICS`]: `Ok(true)` when written, `Ok(false)` when metrics are not
/// initialised. Never blocks; when the output is full or failing, the line (or its rest) waits
/// for the next flush, the failure is counted, and the error says why.
pub fn flush() -> Result<bool, MetricsError> {
    let Some(sink) = SINK.get() else {
        return Ok(false);
    };
    let mut sink = sink.lock().unwrap_or_else(PoisonError::into_inner);
    sink.flush(&METRICS).map(|()| true)
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;
    use std::sync::atomic::AtomicU64;

    use serde_json::Value;

    use super::*;

    fn to_json(metrics: &Metrics) -> Value {
        serde_json::to_value(metrics).unwrap()
    }

    fn fifo_with_idle_reader(dir: &Path) -> (PathBuf, std::fs::File) {
        let path = dir.join("metrics.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Keeps the pipe open like an orchestrator's reader that does not read.
        let reader = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        (path, reader)
    }

    fn drain(reader: &mut std::fs::File) -> String {
        let mut text = Vec::new();
        let mut buf = vec![0; 1 << 16];
        loop {
            match reader.read(&mut buf) {
                Ok(n) if n > 0 => text.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        String::from_utf8(text).unwrap()
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
    fn external_counters_report_deltas_of_their_source() {
        static TOTAL: AtomicU64 = AtomicU64::new(0);
        fn total() -> u64 {
            TOTAL.load(Ordering::Relaxed)
        }
        let counter = ExternalCounter::new(total);
        TOTAL.store(5, Ordering::Relaxed);
        assert_eq!(serde_json::to_string(&counter).unwrap(), "5");
        TOTAL.store(7, Ordering::Relaxed);
        assert_eq!(serde_json::to_string(&counter).unwrap(), "2");
        assert_eq!(serde_json::to_string(&counter).unwrap(), "0");
        assert_eq!(counter.count(), 7);
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
    fn lines_are_appended_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let mut sink = Sink::new(Output::open(&path).unwrap());
        let metrics = Metrics::new();
        metrics.i8042.reset_count.inc();
        sink.flush(&metrics).unwrap();
        sink.flush(&metrics).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["i8042"]["reset_count"], 1);
        assert_eq!(lines[1]["i8042"]["reset_count"], 0);
    }

    #[test]
    fn a_full_fifo_never_blocks_counts_missed_flushes_and_loses_no_count() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut reader) = fifo_with_idle_reader(dir.path());
        let mut sink = Sink::new(Output::open(&path).unwrap());
        let metrics = Metrics::new();
        // Lines longer than PIPE_BUF, so that the pipe takes some of them only in part.
        metrics
            .properties
            .set(BTreeMap::from([("pad".to_string(), "p".repeat(5000))]))
            .unwrap();
        let mut written = 0;
        let mut missed = 0;
        for _ in 0..100 {
            metrics.uart.write_count.inc();
            match sink.flush(&metrics) {
                Ok(()) => written += 1,
                Err(MetricsError::OutputFull) => missed += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            written > 0 && missed > 0,
            "{written} written, {missed} missed"
        );
        assert_eq!(metrics.logger.missed_metrics_count.count(), missed);
        assert_eq!(metrics.logger.metrics_fails.count(), 0);

        // The reader comes back: it gets whole lines, the waiting one first, then a new one.
        let mut text = drain(&mut reader);
        sink.flush(&metrics).unwrap();
        text.push_str(&drain(&mut reader));
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a whole JSON line"))
            .collect();
        assert_eq!(lines.len(), written + 2);
        let reported: u64 = lines
            .iter()
            .map(|l| l["uart"]["write_count"].as_u64().unwrap())
            .sum();
        assert_eq!(reported, 100, "every counted byte is reported exactly once");
        assert_eq!(
            lines.last().unwrap()["logger"]["missed_metrics_count"],
            missed
        );
    }

    #[test]
    fn global_metrics_flush_once_initialised_and_refuse_a_second_init() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        init(path.to_str().unwrap()).unwrap();
        METRICS.palisade.api_connections.inc();
        assert!(flush().unwrap());
        let second = init(dir.path().join("other.json").to_str().unwrap());
        assert!(matches!(second, Err(MetricsError::AlreadyInitialized)));
        assert!(!dir.path().join("other.json").exists());
        let text = std::fs::read_to_string(&path).unwrap();
        let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["palisade"]["api_connections"], 1);
    }

    #[test]
    fn a_bad_path_is_an_open_error() {
        let cfg = MetricsConfig {
            metrics_path: PathBuf::from("/nonexistent/dir/metrics.json"),
            emit_id: false,
            properties: None,
        };
        let err = init_from_config(&cfg).unwrap_err();
        // The global may already be initialised by another test; either refusal is right.
        assert!(matches!(
            err,
            MetricsError::Open { .. } | MetricsError::AlreadyInitialized
        ));
    }
}
