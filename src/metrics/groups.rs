//! The process-wide groups of [`super::Metrics`]: the API, the vCPUs, the legacy devices, the
//! logger, the virtio-mmio transports. Each is incremented by the component it describes,
//! through `METRICS.<group>`.

use super::counter::{Counter, Gauge};

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
        /// `GET /mmds`.
        mmds_count: Counter,
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
        /// `PUT /cpu-config`.
        cpu_cfg_count: Counter,
        /// `PUT /cpu-config` that failed.
        cpu_cfg_fails: Counter,
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
        /// `PUT /serial`.
        serial_count: Counter,
        /// `PUT /serial` that failed.
        serial_fails: Counter,
        /// `PUT /vsock`.
        vsock_count: Counter,
        /// `PUT /vsock` that failed.
        vsock_fails: Counter,
        /// `PUT /mmds` and `PUT /mmds/config`.
        mmds_count: Counter,
        /// `PUT /mmds` and `PUT /mmds/config` that failed.
        mmds_fails: Counter,
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
        /// `PATCH /vsock` (Palisade's addition).
        vsock_count: Counter,
        /// `PATCH /vsock` that failed (Palisade's addition).
        vsock_fails: Counter,
        /// `PATCH /mmds`.
        mmds_count: Counter,
        /// `PATCH /mmds` that failed.
        mmds_fails: Counter,
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
        /// Log lines dropped (counted by the logger).
        missed_log_count: Counter,
        /// The part of `missed_log_count` due to an error other than a full pipe.
        log_fails: Counter,
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
    /// The virtio-mmio transports (`virtio`, Palisade's).
    pub struct VirtioTransportMetrics {
        /// Register accesses ignored: wrong width, wrong state, unknown register.
        mmio_ignored_accesses: Counter,
        /// DRIVER_OK refused: queues outside guest memory or not ready; the device then
        /// needs a reset.
        activate_fails: Counter,
    }
}
