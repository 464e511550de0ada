//! The virtio-vsock device (virtio 1.2 5.10): the guest's AF_VSOCK stream sockets mediated to
//! host AF_UNIX sockets (Firecracker's contract), under Palisade's policy (ports, connection
//! cap, bandwidth).
//!
//! Three queues of 256 entries: 0 RX (host to guest packets), 1 TX (guest to host), 2 event
//! (a transport reset, sent once after a snapshot restore: [`transport_reset`]; host packets
//! wait until the driver has handled it). Offered features: VERSION_1, EVENT_IDX.
//! The configuration space is the guest's CID as a little-endian u64.
//!
//! - Host-initiated: a host client connects to `uds_path` and writes `CONNECT <port>\n`; the
//!   device sends REQUEST to the guest's port; on RESPONSE it writes `OK <host_port>\n` to the
//!   client, on RST (or no answer in [`muxer::CONNECT_TIMEOUT`]) it closes the client.
//! - Guest-initiated: a REQUEST to host port P connects to `<uds_path>_P`; RST when nothing
//!   listens there or the policy refuses.
//!
//! [`packet`] checks every header the guest writes, [`connection`] holds one connection's flow
//! control, [`muxer`] the table of connections and the policy, [`queues`] moves packets between
//! the queues and the table, [`event_handler`] puts it all on the VMM thread's event loop.

pub mod config;
pub mod connection;
pub mod event_handler;
pub mod listener;
pub mod muxer;
pub mod packet;
pub mod queues;
pub mod transport_reset;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use vmm_sys_util::timerfd::TimerFd;

use self::config::{VsockConfigError, VsockDeviceConfig, VsockPolicy};
use self::listener::{bind_listener, ListenerError};
use self::muxer::{replace_buckets, Muxer};
use self::packet::MAX_PKT_LEN;
use super::chain::Segment;
use super::device_core::{core_accessors, CoreDevice, DeviceCore, DeviceLabel};
use super::queue::MAX_QUEUE_SIZE;
use super::{read_config_bytes, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::logger::RateLimitedLog;
use crate::metrics::VsockDeviceMetrics;
use crate::rate_limiter::{RateLimiter, RateLimiterError, RateLimiterState, RateLimiterStateError};

const RX: usize = 0;
const TX: usize = 1;
const EVQ: usize = 2;

/// Errors of device creation and policy updates.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The configuration or policy is invalid.
    #[error(transparent)]
    Config(#[from] VsockConfigError),
    /// The listener on `uds_path` cannot be set up.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// An eventfd or timerfd cannot be created.
    #[error("Cannot create an event for the vsock device")]
    Event(#[source] std::io::Error),
    /// The device rate limiter cannot be created.
    #[error(transparent)]
    RateLimiter(#[from] RateLimiterError),
}

/// Logs a guest can trigger, each rate limited.
#[derive(Default)]
struct GuestLogs {
    bad_packet: RateLimitedLog,
}

/// The vsock device.
pub struct Vsock {
    cid: u64,
    core: DeviceCore<3>,
    muxer: Muxer,
    /// The whole device's limit (`policy.rate_limiter`), both directions.
    limiter: RateLimiter,
    /// Periodic: ends connections whose guest did not answer in time.
    sweep_timer: TimerFd,
    /// Reused for every chain: never more than the queue size.
    segments: Vec<Segment>,
    /// One packet's payload, either way.
    payload: Box<[u8]>,
    metrics: Arc<VsockDeviceMetrics>,
    logs: GuestLogs,
    /// A restore happened and the driver has not been told yet (a transport reset event).
    reset_pending: bool,
    /// The driver was told and has not handled it yet: host packets wait.
    reset_in_flight: Option<transport_reset::ResetInFlight>,
}

impl Vsock {
    /// The device for `config`: checks it and binds the listener on `uds_path` (a stale
    /// socket there is replaced).
    pub fn new(
        config: &VsockDeviceConfig,
        metrics: Arc<VsockDeviceMetrics>,
    ) -> Result<Self, VsockError> {
        config.validate()?;
        let policy = config.policy();
        let listener = bind_listener(config.uds_path())?;
        Ok(Self {
            cid: u64::from(config.guest_cid),
            core: DeviceCore::new(
                VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
                DeviceLabel {
                    name: format!("vsock (cid {})", config.guest_cid),
                    who: "vsock".into(),
                },
                metrics.clone(),
            )
            .map_err(VsockError::Event)?,
            muxer: Muxer::new(config, listener, metrics.clone()),
            limiter: RateLimiter::new(&policy.rate_limiter.unwrap_or_default())?,
            sweep_timer: TimerFd::new().map_err(|e| VsockError::Event(e.into()))?,
            segments: Vec::with_capacity(usize::from(MAX_QUEUE_SIZE)),
            payload: vec![0u8; MAX_PKT_LEN as usize].into_boxed_slice(),
            metrics,
            logs: GuestLogs::default(),
            reset_pending: false,
            reset_in_flight: None,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.cid
    }

    /// The device rate limiter's remaining tokens (`policy.rate_limiter`), for a snapshot.
    /// Connections are not in a snapshot, nor their limiters.
    pub fn save_limiter(&mut self) -> RateLimiterState {
        self.limiter.save_state()
    }

    /// Gives the rate limiter the tokens a snapshot saved (never above its buckets).
    pub fn restore_limiter(
        &mut self,
        state: &RateLimiterState,
    ) -> Result<(), RateLimiterStateError> {
        self.limiter.restore_state(state)
    }

    /// The device's counters.
    pub fn metrics(&self) -> &Arc<VsockDeviceMetrics> {
        &self.metrics
    }

    /// The policy in force (for `GET /vm/config`).
    pub fn policy(&self) -> &VsockPolicy {
        self.muxer.policy()
    }

    /// `PATCH /vsock`: replaces the policy. New connections are judged by it; open ones keep
    /// going under its limits. Nothing changes on error.
    pub fn update_policy(&mut self, policy: VsockPolicy) -> Result<(), VsockError> {
        policy.validate()?;
        replace_buckets(&mut self.limiter, policy.rate_limiter.as_ref());
        self.muxer.update_policy(policy);
        self.metrics.update_count.inc();
        // Packets that waited for the old limits get a chance under the new ones.
        self.core.kick(TX);
        self.core.kick(RX);
        Ok(())
    }
}

impl CoreDevice for Vsock {
    const DEVICE_TYPE: u32 = VIRTIO_ID_VSOCK;
    core_accessors!(core: DeviceCore<3>);

    fn config_read(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn config_write(&mut self, _offset: u64, _data: &[u8]) {
        // guest_cid is read-only.
        self.metrics.cfg_fails.inc();
    }

    fn activated(&mut self) {
        // The driver may have queued packets and buffers before DRIVER_OK.
        self.core.kick(TX);
        self.core.kick(RX);
    }

    fn resetting(&mut self) {
        // The driver starts over: every connection ends, host clients see end of file once
        // the event loop comes by (the kick) and closes their sockets.
        self.muxer.end_all();
        // A driver that starts over needs no transport reset event.
        self.reset_pending = false;
        self.reset_in_flight = None;
        self.core.kick(RX);
    }
}
