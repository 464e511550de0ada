//! virtio-net (virtio 1.x 5.1) with a tap backend and the in-VMM firewall, configured like
//! Firecracker's `network-interfaces`.
//!
//! Two queues of 256 entries: 0 receive (to the guest), 1 transmit (from the guest). Offered
//! features: VERSION_1, EVENT_IDX, checksum offload both ways (CSUM, GUEST_CSUM), TSO both ways
//! (HOST_TSO4/6, GUEST_TSO4/6), mergeable RX buffers (MRG_RXBUF), and MAC when `guest_mac`
//! is set; the configuration space is the MAC. Frames cross the tap with their virtio-net header, so an offloaded frame (up to 64
//! KiB) is one read or write.
//!
//! TX ([`tx`]): descriptor chain -> frame copy -> firewall (`egress`, or `egress_headers` for a
//! GSO frame) -> rate limiter -> tap. RX ([`rx`]): tap -> firewall (`ingress`) -> rate limiter
//! -> guest buffers (one chain, or with MRG_RXBUF as many as the frame needs:
//! [`rx_mergeable`]) -> irqfd. A frame the firewall drops is consumed and counted; it is never
//! partly written. A 1 s timer runs the firewall's `expire_and_log`. Snapshots save and
//! restore an interface's live state ([`snapshot`]).
//!
//! On an interface named in `mmds-config`, the MMDS responder ([`mmds`]) sits beside the
//! firewall: TX offers each frame to it first (a consumed frame goes no further; any other
//! IPv4 frame to the MMDS address is dropped and counted), RX delivers its frames ahead of
//! the tap's, and the 1 s timer polls it.

pub mod config;
pub mod event_handler;
pub mod mmds;
pub mod rx;
mod rx_mergeable;
pub mod snapshot;
pub mod tap;
pub mod tx;
pub mod vnet_hdr;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use palisade_firewall::{
    DropReason, Firewall, FirewallConfig, FirewallError, FirewallStatus, MacAddr,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU,
};
use vmm_sys_util::timerfd::TimerFd;

use self::config::{NetConfigError, NetworkInterfaceConfig, NetworkInterfaceUpdate};
use self::mmds::{MmdsCounters, MmdsStack};
use self::snapshot::RestoredNet;
use self::tap::{Tap, TapError, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
use self::worker::Frame;
use super::chain::Segment;
use super::device_core::{core_accessors, CoreDevice, DeviceCore, DeviceLabel};
use super::queue::MAX_QUEUE_SIZE;
use super::{read_config_bytes, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::logger::RateLimitedLog;
use crate::metrics::NetDeviceMetrics;
use crate::rate_limiter::{BucketUpdate, RateLimiter, RateLimiterConfig, RateLimiterError};

/// The largest frame either way, virtio-net header included (Firecracker's 65,562: a 64 KiB
/// GSO frame, its Ethernet header and a VLAN tag).
pub const MAX_FRAME: usize = 65_562;
const RX: usize = 0;
const TX: usize = 1;

/// Errors of interface creation and update.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] NetConfigError),
    /// The tap cannot be configured.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The tap cannot be opened (Firecracker's message, at PUT and at start alike).
    #[error("Could not create the network device: Open tap device failed: {0}")]
    OpenTap(TapError),
    /// An eventfd or timerfd cannot be created.
    #[error("Cannot create an event for interface {0}")]
    Event(String, #[source] std::io::Error),
    /// A rate limiter's timer cannot be created.
    #[error(transparent)]
    RateLimiter(#[from] RateLimiterError),
    /// The firewall refused its configuration or its flow log.
    #[error("Firewall of interface {0}")]
    Firewall(String, #[source] FirewallError),
    /// PATCH with a firewall for an interface created without one.
    #[error("Interface {0} has no firewall (no guest_mac and no firewall object at creation)")]
    NoFirewall(String),
}

/// Logs a guest can trigger, each rate limited.
#[derive(Default)]
struct GuestLogs {
    bad_chain: RateLimitedLog,
    tap_error: RateLimitedLog,
}

/// A virtio-net device.
pub struct Net {
    id: String,
    tap: Tap,
    mac: Option<MacAddr>,
    /// `mtu`, offered to the guest and enforced on its plain frames.
    mtu: Option<u16>,
    core: DeviceCore<2>,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    firewall: Option<Firewall>,
    /// The MMDS responder, on an interface named in `mmds-config`.
    mmds: Option<MmdsStack>,
    maintenance: TimerFd,
    /// Reused for every chain: never more than the queue size.
    segments: Vec<Segment>,
    /// The frame read from the tap and not yet delivered.
    rx_frame: Frame,
    /// The frame being sent.
    tx_frame: Frame,
    /// The chains of the frame being received with mergeable buffers.
    rx_gathered: rx_mergeable::Gathered,
    metrics: Arc<NetDeviceMetrics>,
    logs: GuestLogs,
}

fn offered_features(mac: bool, mtu: bool) -> u64 {
    let mut features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
    for bit in [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_MRG_RXBUF,
    ] {
        features |= 1 << bit;
    }
    if mac {
        features |= 1 << VIRTIO_NET_F_MAC;
    }
    if mtu {
        features |= 1 << VIRTIO_NET_F_MTU;
    }
    features
}

/// The tap offloads that match the guest's accepted receive features.
fn tap_offloads(features: u64) -> u32 {
    let has = |bit: u32| features & (1 << bit) != 0;
    let mut flags = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        flags |= TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= TUN_F_TSO6;
        }
    }
    flags
}

/// Checks an interface's configuration and opens its tap (`TUNSETIFF`), as
/// `PUT /network-interfaces` does before boot and the build does at start.
pub fn open_tap(config: &NetworkInterfaceConfig) -> Result<Tap, NetError> {
    config.validate()?;
    Tap::open(&config.host_dev_name).map_err(NetError::OpenTap)
}

impl Net {
    /// An interface from its configuration: opens the tap, the limiters and the firewall.
    pub fn new(
        config: &NetworkInterfaceConfig,
        metrics: Arc<NetDeviceMetrics>,
    ) -> Result<Self, NetError> {
        let tap = open_tap(config)?;
        Self::with_tap(config, tap, metrics)
    }

    /// An interface on an open tap (or, in tests, a stand-in).
    pub fn with_tap(
        config: &NetworkInterfaceConfig,
        tap: Tap,
        metrics: Arc<NetDeviceMetrics>,
    ) -> Result<Self, NetError> {
        let id = &config.iface_id;
        let mac = config.mac()?;
        let firewall = config
            .effective_firewall()
            .map(|fw| Firewall::new(id, &fw, mac, Instant::now()))
            .transpose()
            .map_err(|e| NetError::Firewall(id.clone(), e))?;
        let parts = RestoredNet {
            config: config.clone(),
            tap,
            rx_limiter: RateLimiter::new(&config.rx_rate_limiter.unwrap_or_default())?,
            tx_limiter: RateLimiter::new(&config.tx_rate_limiter.unwrap_or_default())?,
            firewall,
        };
        Self::restored(parts, metrics)
    }

    /// An interface from its parts: a new one's, or one restored from a snapshot.
    pub fn restored(parts: RestoredNet, metrics: Arc<NetDeviceMetrics>) -> Result<Self, NetError> {
        let mac = parts.config.mac()?;
        let RestoredNet {
            config,
            tap,
            rx_limiter,
            tx_limiter,
            firewall,
        } = parts;
        let id = config.iface_id;
        let event_err = |e: std::io::Error| NetError::Event(id.clone(), e);
        let label = DeviceLabel {
            name: format!("net {id} ({})", tap.name()),
            who: format!("Interface {id}"),
        };
        Ok(Self {
            tap,
            mac,
            core: DeviceCore::new(
                offered_features(mac.is_some(), config.mtu.is_some()),
                label,
                metrics.clone(),
            )
            .map_err(event_err)?,
            mtu: config.mtu,
            rx_limiter,
            tx_limiter,
            firewall,
            mmds: None,
            maintenance: TimerFd::new().map_err(|e| event_err(e.into()))?,
            segments: Vec::with_capacity(usize::from(MAX_QUEUE_SIZE)),
            rx_frame: Frame::new(MAX_FRAME),
            tx_frame: Frame::new(MAX_FRAME),
            rx_gathered: rx_mergeable::Gathered::new(),
            metrics,
            logs: GuestLogs::default(),
            id,
        })
    }

    /// Serves MMDS on this interface with `stack` (before the device's subscriber is
    /// registered, so its timer is armed for it): its guest's ARP for and TCP:80 to the MMDS
    /// address go to the stack, its other frames to that address are dropped.
    pub fn set_mmds(&mut self, mut stack: MmdsStack) {
        stack.set_metrics(self.metrics.clone());
        self.mmds = Some(stack);
    }

    /// The MMDS responder's counters, on an interface with MMDS.
    pub fn mmds_counters(&self) -> Option<MmdsCounters> {
        self.mmds.as_ref().map(MmdsStack::counters)
    }

    /// True when the driver accepted mergeable RX buffers.
    fn mergeable(&self) -> bool {
        let features = self.core.active.as_ref().map_or(0, |a| a.features);
        features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0
    }

    /// The interface id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The limits now in force: (rx, tx).
    pub fn rate_limiter_configs(&self) -> (RateLimiterConfig, RateLimiterConfig) {
        (self.rx_limiter.to_config(), self.tx_limiter.to_config())
    }

    /// `GET /network-interfaces/{id}/firewall`.
    pub fn firewall_status(&self) -> Option<FirewallStatus> {
        self.firewall.as_ref().map(Firewall::status)
    }

    /// The firewall configuration in force.
    pub fn firewall_config(&self) -> Option<&FirewallConfig> {
        self.firewall.as_ref().map(Firewall::config)
    }

    /// `PATCH /network-interfaces/{id}`: limiters kept, removed or replaced, the firewall's
    /// rules swapped at once (flows they no longer allow are cut). Nothing changes on error.
    pub fn update(&mut self, update: &NetworkInterfaceUpdate) -> Result<(), NetError> {
        if let Some(config) = &update.firewall {
            config
                .validate()
                .map_err(|source| NetConfigError::Firewall {
                    iface: self.id.clone(),
                    source,
                })?;
            let firewall = self
                .firewall
                .as_mut()
                .ok_or_else(|| NetError::NoFirewall(self.id.clone()))?;
            firewall
                .update(config)
                .map_err(|e| NetError::Firewall(self.id.clone(), e))?;
        }
        for (limiter, config) in [
            (&mut self.rx_limiter, &update.rx_rate_limiter),
            (&mut self.tx_limiter, &update.tx_rate_limiter),
        ] {
            if let Some(config) = config {
                limiter.update_buckets(
                    BucketUpdate::from_config(config.bandwidth.as_ref()),
                    BucketUpdate::from_config(config.ops.as_ref()),
                );
            }
        }
        self.metrics.update_count.inc();
        // Frames that waited for the old limits get a chance under the new ones.
        let _ = self.core.queue_events[TX].write(1);
        let _ = self.core.queue_events[RX].write(1);
        Ok(())
    }
}

/// Counts a firewall drop in the interface's metrics.
fn count_drop(m: &NetDeviceMetrics, reason: DropReason, egress: bool) {
    {
        if egress {
            m.fw_egress_drops.inc();
        } else {
            m.fw_ingress_drops.inc();
        }
        let counter = match reason {
            DropReason::SpoofMac => {
                m.tx_spoofed_mac_count.inc();
                &m.fw_spoof_mac
            }
            DropReason::SpoofIp => &m.fw_spoof_ip,
            DropReason::SpoofArp => &m.fw_spoof_arp,
            DropReason::RogueDhcpRa => &m.fw_rogue_dhcp_ra,
            DropReason::RuleDeny => &m.fw_rule_deny,
            DropReason::DefaultDeny => &m.fw_default_deny,
            DropReason::ConntrackFull => &m.fw_conntrack_full,
            DropReason::Fragment => &m.fw_fragment,
            DropReason::Malformed => &m.fw_malformed,
            DropReason::LengthMismatch => &m.fw_length_mismatch,
            DropReason::SourceRoute => &m.fw_source_route,
        };
        counter.inc();
    }
}

impl CoreDevice for Net {
    const DEVICE_TYPE: u32 = VIRTIO_ID_NET;
    core_accessors!(core: DeviceCore<2>);

    fn config_read(&self, offset: u64, data: &mut [u8]) {
        // virtio-net config space: mac[6], status (u16), max_virtqueue_pairs (u16), mtu (u16).
        let mut space = [0u8; 12];
        space[..6].copy_from_slice(&self.mac.unwrap_or_default());
        space[10..].copy_from_slice(&self.mtu.unwrap_or(0).to_le_bytes());
        read_config_bytes(&space, offset, data);
    }

    fn config_write(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is read-only in virtio 1.x (the legacy writable MAC is not offered).
        self.metrics.cfg_fails.inc();
    }

    fn activated(&mut self) {
        let features = self.core.active.as_ref().map_or(0, |a| a.features);
        if let Err(e) = self.tap.set_offload(tap_offloads(features)) {
            // Without the offloads the tap sends plain frames, which every driver accepts.
            log::warn!("Interface {}: {e}", self.id);
        }
        // Frames may already wait in the tap (edge-triggered: look now), and the driver may
        // have queued frames before DRIVER_OK.
        let _ = self.core.queue_events[RX].write(1);
        let _ = self.core.queue_events[TX].write(1);
    }

    fn resetting(&mut self) {
        self.rx_frame.len = 0;
    }
}
