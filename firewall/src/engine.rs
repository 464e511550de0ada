//! The firewall of one network interface: what the net device calls on every frame, on its
//! timer, and on the API's PATCH and GET. The per-frame decision lives in `packet_path`, the
//! conversion of flows into flow-log records in `flow_report`.

mod flow_report;
mod packet_path;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::antispoof::AntiSpoof;
use crate::config::{ConfigError, FirewallConfig};
use crate::conntrack::Conntrack;
use crate::counters::{Counters, DropReason};
use crate::flow_log::{FlowLog, FlowLogError};
use crate::flow_table::{FlowTable, HashSeed};
use crate::net_types::{Direction, MacAddr};
use crate::rules::CompiledRules;
use crate::status::{ConntrackStatus, FirewallStatus, FlowLogStatus, RuleHits};

pub(crate) use flow_report::is_still_allowed;
use flow_report::RejectTally;

/// How often the net device should call [`Firewall::expire_and_log`].
pub const MAINTENANCE_PERIOD: Duration = Duration::from_secs(1);

/// Rejected flows aggregated between two flow-log intervals.
const REJECT_TABLE_CAPACITY: usize = 4_096;

/// The firewall's decision on one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver the frame.
    Pass,
    /// Consume the frame without delivering it; the reason has been counted.
    Drop(DropReason),
}

/// Errors of creating or updating a firewall.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The configuration does not validate.
    #[error("Invalid firewall configuration")]
    Config(#[source] ConfigError),
    /// `conntrack_max` differs from the one the table was created with.
    #[error("\"conntrack_max\" is fixed when the interface is created ({current}); it cannot change to {requested}")]
    ConntrackMaxChanged { current: usize, requested: usize },
    /// The flow log cannot be opened or written.
    #[error("Flow log failure")]
    FlowLog(#[source] FlowLogError),
}

/// The firewall of one interface. Owned by the VMM thread; no locks, no allocation per frame.
#[derive(Debug)]
pub struct Firewall {
    pub(crate) iface_id: String,
    pub(crate) guest_mac: Option<MacAddr>,
    pub(crate) config: FirewallConfig,
    pub(crate) antispoof: Option<AntiSpoof>,
    pub(crate) rules: CompiledRules,
    pub(crate) rule_hits: [Vec<u64>; 2],
    pub(crate) conntrack: Conntrack,
    rejects: FlowTable<RejectTally>,
    pub(crate) last_reject_report_ms: u64,
    pub(crate) flow_log: FlowLog,
    epoch: Instant,
    /// Milliseconds the firewall's clock reads at `epoch`: 0 for a new firewall; for one
    /// restored from a snapshot, far enough ahead that every restored flow's last packet
    /// (saved as an age) lies at or after 0.
    clock_offset_ms: u64,
    hash_seed: HashSeed,
    pub(crate) counters: Counters,
}

fn rule_hit_counters(config: &FirewallConfig) -> [Vec<u64>; 2] {
    [vec![0; config.ingress.len()], vec![0; config.egress.len()]]
}

/// The reject aggregator: sized only while a flow log is on; hashed with a seed derived from
/// the firewall's, so that re-creating it after an update needs no fresh randomness.
fn reject_table(flow_log: &FlowLog, seed: HashSeed) -> FlowTable<RejectTally> {
    let capacity = if flow_log.is_enabled() {
        REJECT_TABLE_CAPACITY
    } else {
        0
    };
    FlowTable::with_capacity(capacity, seed.derive(REJECT_TABLE_CAPACITY as u64))
}

impl Firewall {
    /// A firewall for interface `iface_id`. Anti-spoofing is on when `guest_mac` is set. `now`
    /// is the firewall's clock epoch; every later call passes a later `Instant`. Allocates the
    /// connection table (`conntrack_max` flows) and the flow-log ring, and opens the flow log.
    pub fn new(
        iface_id: &str,
        config: &FirewallConfig,
        guest_mac: Option<MacAddr>,
        now: Instant,
    ) -> Result<Firewall, FirewallError> {
        Firewall::with_clock(iface_id, config, guest_mac, (now, 0))
    }

    /// [`Firewall::new`] with a clock that reads `clock.1` milliseconds at `clock.0`.
    pub(crate) fn with_clock(
        iface_id: &str,
        config: &FirewallConfig,
        guest_mac: Option<MacAddr>,
        clock: (Instant, u64),
    ) -> Result<Firewall, FirewallError> {
        let (now, clock_offset_ms) = clock;
        config
            .validate_for_interface(guest_mac)
            .map_err(FirewallError::Config)?;
        let unix_now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        // Flow-log times are the firewall's clock plus this offset.
        let unix_epoch_ms = unix_now_ms.saturating_sub(clock_offset_ms);
        let flow_log = FlowLog::open(iface_id, config.flow_log.as_deref(), unix_epoch_ms)
            .map_err(FirewallError::FlowLog)?;
        let hash_seed = HashSeed::random();
        Ok(Firewall {
            iface_id: iface_id.to_string(),
            guest_mac,
            antispoof: guest_mac.map(|mac| AntiSpoof::new(mac, &config.allowed_ips)),
            rules: CompiledRules::compile(config),
            rule_hits: rule_hit_counters(config),
            conntrack: Conntrack::new(config.conntrack_max, hash_seed),
            rejects: reject_table(&flow_log, hash_seed),
            last_reject_report_ms: clock_offset_ms,
            flow_log,
            epoch: now,
            clock_offset_ms,
            hash_seed,
            counters: Counters::default(),
            config: config.clone(),
        })
    }

    /// Decides on a frame from the guest (TX). `frame` is the whole Ethernet frame, after the
    /// virtio-net header.
    pub fn egress(&mut self, frame: &[u8], now: Instant) -> Verdict {
        self.filter(Direction::Egress, frame, frame.len(), now)
    }

    /// Decides on a frame for the guest (RX).
    pub fn ingress(&mut self, frame: &[u8], now: Instant) -> Verdict {
        self.filter(Direction::Ingress, frame, frame.len(), now)
    }

    /// Like [`Firewall::egress`] for a frame scattered over buffers: `headers` is a contiguous
    /// copy of its start (the headers; 256 bytes are plenty for common frames: what does not
    /// fit is dropped as malformed), `frame_len` its full length, counted in the flow log.
    pub fn egress_headers(&mut self, headers: &[u8], frame_len: usize, now: Instant) -> Verdict {
        self.filter(Direction::Egress, headers, frame_len, now)
    }

    /// Like [`Firewall::ingress`] for a frame scattered over buffers (see `egress_headers`).
    pub fn ingress_headers(&mut self, headers: &[u8], frame_len: usize, now: Instant) -> Verdict {
        self.filter(Direction::Ingress, headers, frame_len, now)
    }

    /// Replaces the rules, allowed IPs, defaults and flow-log settings at once, then removes
    /// the tracked flows the new configuration would not allow (their next packets are judged
    /// as new flows). On error nothing has changed. `conntrack_max` cannot change.
    pub fn update(&mut self, config: &FirewallConfig) -> Result<(), FirewallError> {
        config
            .validate_for_interface(self.guest_mac)
            .map_err(FirewallError::Config)?;
        if config.conntrack_max != self.config.conntrack_max {
            return Err(FirewallError::ConntrackMaxChanged {
                current: self.config.conntrack_max,
                requested: config.conntrack_max,
            });
        }
        let rules = CompiledRules::compile(config);
        let was_logging = self.flow_log.is_enabled();
        self.flow_log
            .change_path(config.flow_log.as_deref())
            .map_err(FirewallError::FlowLog)?;
        if was_logging != self.flow_log.is_enabled() {
            self.rejects = reject_table(&self.flow_log, self.hash_seed);
        }
        self.rules = rules;
        self.rule_hits = rule_hit_counters(config);
        self.antispoof = self
            .guest_mac
            .map(|mac| AntiSpoof::new(mac, &config.allowed_ips));
        self.config = config.clone();
        self.cut_flows_no_longer_allowed();
        Ok(())
    }

    /// The timer's work: expires idle and closed flows, emits the flow-log records that are due
    /// and writes the log without blocking. Call every [`MAINTENANCE_PERIOD`].
    pub fn expire_and_log(&mut self, now: Instant) -> Result<(), FirewallError> {
        let now_ms = self.clock_ms(now);
        self.expire_flows_and_report(now_ms);
        self.flow_log
            .write_out(now_ms)
            .map_err(FirewallError::FlowLog)
    }

    /// The configuration in force.
    pub fn config(&self) -> &FirewallConfig {
        &self.config
    }

    /// Frame and flow counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Flows in the connection table.
    pub fn tracked_flows(&self) -> usize {
        self.conntrack.len()
    }

    /// `GET /network-interfaces/{id}/firewall`: the rules, per-rule hits and every counter.
    pub fn status(&self) -> FirewallStatus {
        FirewallStatus {
            iface_id: self.iface_id.clone(),
            anti_spoofing: self.antispoof.is_some(),
            rules: self.config.clone(),
            rule_hits: RuleHits {
                ingress: self.rule_hits[0].clone(),
                egress: self.rule_hits[1].clone(),
            },
            counters: self.counters.status(),
            conntrack: ConntrackStatus {
                flows: self.conntrack.len(),
                max: self.conntrack.capacity(),
            },
            flow_log: FlowLogStatus {
                enabled: self.flow_log.is_enabled(),
                records_written: self.flow_log.records_written,
                records_lost: self.flow_log.records_lost,
                records_suppressed: self.flow_log.records_suppressed,
            },
        }
    }

    pub(crate) fn clock_ms(&self, now: Instant) -> u64 {
        let since_epoch = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.clock_offset_ms.saturating_add(since_epoch)
    }
}
