//! The per-device groups: whoever creates a device creates its group as an `Arc`, gives the
//! device a clone and registers the group in `METRICS.devices` ([`super::DeviceRegistry`])
//! under the device's key.

use super::counter::Counter;

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
        /// Plain guest frames longer than the interface's `mtu`, dropped (Palisade's).
        tx_over_mtu_drops: Counter,
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
        /// Guest frames the MMDS responder took (Palisade's).
        mmds_frames_in: Counter,
        /// MMDS responder frames delivered to the guest (Palisade's).
        mmds_frames_out: Counter,
        /// Guest frames to the MMDS address the responder does not take (not ARP, not TCP
        /// port 80), dropped on an interface with MMDS (Palisade's).
        mmds_other_drops: Counter,
        /// MMDS requests answered 200 (Palisade's).
        mmds_answers_ok: Counter,
        /// MMDS requests answered 401: no or no valid V2 token (Palisade's).
        mmds_answers_unauthorized: Counter,
        /// MMDS requests answered with another 4xx or 5xx (Palisade's).
        mmds_answers_error: Counter,
        /// MMDS connection attempts (SYNs) dropped over the VM's request rate limit, and
        /// MMDS frames over its frame limit (Palisade's).
        mmds_rate_limited: Counter,
        /// MMDS SYNs refused (RST) because every connection slot was taken (Palisade's).
        mmds_syn_refused: Counter,
        /// MMDS connections aborted at their deadline (Palisade's).
        mmds_deadline_aborts: Counter,
        /// Times the MMDS responder's guest-bound queue was full (Palisade's).
        mmds_queue_full: Counter,
        /// IPv4 fragments to the MMDS address, dropped (Palisade's).
        mmds_fragments: Counter,
        /// Frames to the MMDS service too big for its input buffer, dropped (Palisade's).
        mmds_frames_too_big: Counter,
        /// Flow-log writes that failed (Palisade's).
        flow_log_fails: Counter,
        /// `PATCH /network-interfaces` updates applied.
        update_count: Counter,
        /// Times the device asked the driver for a reset (Palisade's).
        needs_reset_count: Counter,
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
    /// The vsock device (`vsock`): Firecracker's vsock metrics' spirit, Palisade's names for
    /// the policy and the hostile-guest counters.
    pub struct VsockDeviceMetrics {
        /// Activations that failed.
        activate_fails: Counter,
        /// Refused configuration space writes.
        cfg_fails: Counter,
        /// Failures to read an event, arm a timer or raise an interrupt.
        event_fails: Counter,
        /// RX queue notifications.
        rx_queue_event_count: Counter,
        /// TX queue notifications.
        tx_queue_event_count: Counter,
        /// Event queue notifications.
        ev_queue_event_count: Counter,
        /// Readiness events of host sockets (listener and connections).
        conn_event_count: Counter,
        /// Rate limiter timer expirations (device and connections).
        rate_limiter_event_count: Counter,
        /// Times a packet waited for the device rate limiter.
        rate_limiter_throttled: Counter,
        /// Connections a host client opened (the guest accepted them).
        conns_opened_host: Counter,
        /// Connections the guest opened to a host listener.
        conns_opened_guest: Counter,
        /// Connections refused: the port is not in the policy.
        refused_policy_port: Counter,
        /// Connections refused: `max_connections` reached.
        refused_max_connections: Counter,
        /// Guest connections refused: nothing listens at `<uds_path>_<port>`.
        refused_no_listener: Counter,
        /// Host clients closed for a bad `CONNECT <port>` line.
        refused_bad_handshake: Counter,
        /// Host connections the guest refused (RST to our REQUEST) or never answered.
        refused_by_guest: Counter,
        /// Connections the guest reset.
        conns_reset_by_guest: Counter,
        /// Connections the device reset (protocol violation, host error, timeout).
        conns_reset_by_host: Counter,
        /// Connections closed in order (shutdown both ways).
        conns_closed: Counter,
        /// Data bytes delivered to the guest.
        rx_bytes_count: Counter,
        /// Data bytes received from the guest.
        tx_bytes_count: Counter,
        /// Packets delivered to the guest.
        rx_packets_count: Counter,
        /// Packets received from the guest.
        tx_packets_count: Counter,
        /// Guest packets refused: every header check together.
        bad_header: Counter,
        /// Header shorter than 44 bytes, or a chain that cannot be read.
        bad_header_short: Counter,
        /// `src_cid` is not the guest's CID.
        bad_src_cid: Counter,
        /// `dst_cid` is not the host (2).
        bad_dst_cid: Counter,
        /// `type` is not STREAM.
        bad_type: Counter,
        /// Unknown `op`.
        bad_op: Counter,
        /// `len` over 64 KiB, past the chain, or data on a packet that carries none.
        bad_len: Counter,
        /// RX chains refused (device-readable buffers, too small, outside memory).
        bad_rx_chain: Counter,
        /// Guest data beyond the credit we gave (the connection is reset).
        credit_overrun: Counter,
        /// Guest credit updates claiming more than was sent (the connection is reset).
        credit_lies: Counter,
        /// Packets for no connection, or ops out of place.
        unexpected_packets: Counter,
        /// RST replies dropped because the guest does not read its RX queue.
        rst_dropped: Counter,
        /// `update_policy` calls.
        update_count: Counter,
        /// Times the device asked the driver for a reset.
        needs_reset_count: Counter,
        /// Transport reset events sent to the guest (one per snapshot restore).
        transport_resets_sent: Counter,
        /// Event queue chains refused (device-readable, shorter than 4 bytes, outside memory).
        bad_event_chain: Counter,
    }
}

metric_group! {
    /// The balloon device (`balloon`): Firecracker's names plus the hostile-guest counters.
    pub struct BalloonDeviceMetrics {
        /// Activations that failed.
        activate_fails: Counter,
        /// Inflate queue notifications.
        inflate_count: Counter,
        /// Deflate queue notifications.
        deflate_count: Counter,
        /// Statistics buffers the guest filled and the device read.
        stats_updates_count: Counter,
        /// Statistics buffers refused as malformed.
        stats_update_fails: Counter,
        /// Free page reports given back to the host.
        free_page_report_count: Counter,
        /// Bytes of free page reports given back.
        free_page_report_freed: Counter,
        /// Free page reports refused as malformed.
        free_page_report_fails: Counter,
        /// Free page hints given back to the host.
        free_page_hint_count: Counter,
        /// Bytes of free page hints given back.
        free_page_hint_freed: Counter,
        /// Free page hints refused as malformed (Firecracker counts failed discards here
        /// too).
        free_page_hint_fails: Counter,
        /// Failures to read an event or to raise an interrupt.
        event_fails: Counter,
        /// Pages the guest gave to the balloon and the host took back (Palisade's).
        inflated_pages: Counter,
        /// Pages the guest took back from the balloon (Palisade's).
        deflated_pages: Counter,
        /// Page numbers refused: outside guest RAM, duplicates, past the target, not in the
        /// balloon, past the per-request cap (Palisade's).
        refused_pfns: Counter,
        /// Requests refused as malformed: device-writable buffers, lengths not a multiple of
        /// 4 (Palisade's).
        execute_fails: Counter,
        /// madvise(2) calls that failed: the pages stayed with the VMM (Palisade's).
        madvise_fails: Counter,
        /// Times the device asked the driver for a reset (Palisade's).
        needs_reset_count: Counter,
    }
}

impl BlockDeviceMetrics {
    /// The top-level key of drive `drive_id`'s group.
    pub fn key(drive_id: &str) -> String {
        format!("block_{drive_id}")
    }
}

impl NetDeviceMetrics {
    /// The top-level key of interface `iface_id`'s group.
    pub fn key(iface_id: &str) -> String {
        format!("net_{iface_id}")
    }
}

impl EntropyDeviceMetrics {
    /// The top-level key of the entropy device's group (a VM has at most one).
    pub const KEY: &'static str = "entropy";
}

impl BalloonDeviceMetrics {
    /// The top-level key of the balloon device's group (a VM has at most one).
    pub const KEY: &'static str = "balloon";
}

impl VsockDeviceMetrics {
    /// The top-level key of the vsock device's group (a VM has at most one).
    pub const KEY: &'static str = "vsock";
}

/// The counters the shared virtio device core increments, whatever a group names them.
pub trait DeviceCoreCounters: Send + Sync {
    /// Refused activations.
    fn activate_fails(&self) -> &Counter;
    /// Failures to read a queue event or to raise an interrupt.
    fn event_fails(&self) -> &Counter;
    /// Times the device asked the driver for a reset.
    fn needs_reset_count(&self) -> &Counter;
}

/// Implements [`DeviceCoreCounters`] for a group, naming its event-failure counter.
macro_rules! device_core_counters {
    ($($group:ty => $event_fails:ident),* $(,)?) => {$(
        impl DeviceCoreCounters for $group {
            fn activate_fails(&self) -> &Counter {
                &self.activate_fails
            }
            fn event_fails(&self) -> &Counter {
                &self.$event_fails
            }
            fn needs_reset_count(&self) -> &Counter {
                &self.needs_reset_count
            }
        }
    )*};
}

device_core_counters! {
    BlockDeviceMetrics => event_fails,
    NetDeviceMetrics => event_fails,
    EntropyDeviceMetrics => entropy_event_fails,
    VsockDeviceMetrics => event_fails,
    BalloonDeviceMetrics => event_fails,
}
