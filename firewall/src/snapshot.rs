//! The firewall's live state in a VM snapshot: per-rule hits, the counters, the flow-log
//! counts and the connection table, with every timestamp saved as an age (milliseconds before
//! the save), so that a restore in another process, on another monotonic clock, keeps each
//! flow's remaining lifetime.
//!
//! The configuration (rules, allowed IPs, defaults, `conntrack_max`) is not here: the net
//! device saves it with the interface and the restore takes it from there. Anti-spoofing has
//! no state of its own beyond the guest's MAC and `allowed_ips`; the state names the MAC it
//! was saved with, and a restore refuses another.
//!
//! A restored state is hostile input: the flow count is bounded by the table's capacity, every
//! counter by [`MAX_SAVED_COUNT`], every enum arrives as a number and is checked, addresses must fit their family, ports must fit
//! the protocol, TCP flags must fit the state, no key may appear twice, and each flow must be
//! one the rules in force admit (from an address the guest owns when the guest opened it), as
//! after a rule update. Flows that had expired when the state was saved are left out. The
//! reject aggregator of the flow log is not saved (rejects since the last flow-log interval are
//! not reported) and the flow-log ring starts empty.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::FirewallConfig;
use crate::conntrack::{Flow, FlowState, LONGEST_TIMEOUT_MS};
use crate::counters::DropReason;
use crate::engine::{is_still_allowed, Firewall, FirewallError};
use crate::flow_table::FlowKey;
use crate::frame::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use crate::net_types::{Direction, MacAddr};

/// One tracked flow as saved. `origin` and `state` are numbers checked at restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFlow {
    /// The guest's address (IPv4 in the low 32 bits).
    pub guest: u128,
    /// The remote address.
    pub remote: u128,
    /// The guest's port, or the ICMP echo identifier.
    pub guest_port: u16,
    /// The remote port (0 for ICMP echo and protocols without ports).
    pub remote_port: u16,
    /// The IP protocol.
    pub protocol: u8,
    /// IPv6.
    pub v6: bool,
    /// Who opened the flow: 0 the remote (ingress), 1 the guest (egress).
    pub origin: u8,
    /// 0 TCP opening, 1 TCP established, 2 TCP closing, 3 TCP closed, 4 unreplied, 5 replied.
    pub state: u8,
    /// The opener sent a FIN.
    pub fin_from_origin: bool,
    /// The other side sent a FIN.
    pub fin_from_reply: bool,
    /// Milliseconds since the flow's last packet, at the save.
    pub idle_ms: u64,
    /// Milliseconds since the first packet of the current flow-log window, at the save.
    pub window_age_ms: u64,
    /// Packets in the current flow-log window.
    pub packets: u64,
    /// Bytes in the current flow-log window.
    pub bytes: u64,
}

/// Frame and flow counters as saved; `dropped_*` hold one count per [`DropReason::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCounters {
    /// Frames passed: ingress, egress.
    pub passed_frames: [u64; 2],
    /// Bytes passed: ingress, egress.
    pub passed_bytes: [u64; 2],
    /// Ingress drops by reason.
    pub dropped_ingress: Vec<u64>,
    /// Egress drops by reason.
    pub dropped_egress: Vec<u64>,
    /// Flows added to the connection table.
    pub flows_created: u64,
    /// Flows removed.
    pub flows_ended: u64,
    /// Flows cut by rule updates.
    pub flows_cut_by_update: u64,
}

/// A firewall's live state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallState {
    /// The interface it belongs to.
    pub iface_id: String,
    /// The guest MAC anti-spoofing was keyed by (None: anti-spoofing off).
    pub guest_mac: Option<MacAddr>,
    /// Hits of each ingress rule.
    pub ingress_rule_hits: Vec<u64>,
    /// Hits of each egress rule.
    pub egress_rule_hits: Vec<u64>,
    /// The counters.
    pub counters: SavedCounters,
    /// Flow-log records written, lost and suppressed.
    pub flow_log_records: [u64; 3],
    /// The connection table.
    pub flows: Vec<SavedFlow>,
}

/// Why a saved firewall state is refused.
#[derive(Debug, thiserror::Error)]
pub enum FirewallStateError {
    /// The state belongs to another interface.
    #[error("The firewall state is of interface '{state}', not '{config}'")]
    Interface {
        /// In the state.
        state: String,
        /// In the configuration.
        config: String,
    },
    /// The state was saved with another guest MAC (or anti-spoofing on/off).
    #[error("The firewall state of interface '{0}' was saved with another guest MAC")]
    GuestMac(String),
    /// More flows than the table holds.
    #[error("{count} tracked flows in the state; the table holds at most {max}")]
    TooManyFlows {
        /// In the state.
        count: usize,
        /// `conntrack_max`.
        max: usize,
    },
    /// Rule hits for another number of rules.
    #[error("{count} {direction} rule hit counters in the state for {rules} rules")]
    RuleHits {
        /// ingress or egress.
        direction: &'static str,
        /// In the state.
        count: usize,
        /// Configured.
        rules: usize,
    },
    /// Drop counters for another number of reasons.
    #[error("{count} {direction} drop counters in the state; there are {} reasons", DropReason::ALL.len())]
    DropCounters {
        /// ingress or egress.
        direction: &'static str,
        /// In the state.
        count: usize,
    },
    /// A counter (or a flow's packets or bytes) beyond [`MAX_SAVED_COUNT`].
    #[error("The saved {0} is beyond {MAX_SAVED_COUNT}")]
    Count(&'static str),
    /// A flow's origin is not a direction.
    #[error("Flow {index}: origin {value} is not a direction")]
    Origin {
        /// The flow.
        index: usize,
        /// Its value.
        value: u8,
    },
    /// A flow's state is not a connection-tracking state.
    #[error("Flow {index}: state {value} is not a connection-tracking state")]
    State {
        /// The flow.
        index: usize,
        /// Its value.
        value: u8,
    },
    /// A flow whose state, FIN flags, ports or addresses do not fit its protocol and family.
    #[error("Flow {index}: {what}")]
    Inconsistent {
        /// The flow.
        index: usize,
        /// What does not fit.
        what: &'static str,
    },
    /// The same flow twice.
    #[error("Flow {0} is tracked twice")]
    Duplicate(usize),
    /// A flow that the rules in force would not admit.
    #[error("Flow {0} is not allowed by the firewall's rules (or from an address the guest does not own)")]
    NotAllowed(usize),
    /// The firewall cannot be created for the configuration.
    #[error("Cannot create the restored firewall")]
    Firewall(#[source] FirewallError),
}

/// The largest counter a state may hold (2^62: never reached by counting; a larger one could
/// overflow as the restored firewall counts on). A save holds counts at it.
pub const MAX_SAVED_COUNT: u64 = 1 << 62;

/// Refuses a count that the restored firewall could not go on adding to.
fn check_count(what: &'static str, count: u64) -> Result<(), FirewallStateError> {
    if count > MAX_SAVED_COUNT {
        return Err(FirewallStateError::Count(what));
    }
    Ok(())
}

/// Checks every counter of `state` (not the flows').
fn check_counters(state: &FirewallState) -> Result<(), FirewallStateError> {
    let c = &state.counters;
    let lists: [(&'static str, &[u64]); 8] = [
        ("rule hit count", &state.ingress_rule_hits),
        ("rule hit count", &state.egress_rule_hits),
        ("passed frame count", &c.passed_frames),
        ("passed byte count", &c.passed_bytes),
        ("drop count", &c.dropped_ingress),
        ("drop count", &c.dropped_egress),
        (
            "flow count",
            &[c.flows_created, c.flows_ended, c.flows_cut_by_update],
        ),
        ("flow-log record count", &state.flow_log_records),
    ];
    for (what, counts) in lists {
        for &count in counts {
            check_count(what, count)?;
        }
    }
    Ok(())
}

const STATES: [FlowState; 6] = [
    FlowState::TcpOpening,
    FlowState::TcpEstablished,
    FlowState::TcpClosing,
    FlowState::TcpClosed,
    FlowState::Unreplied,
    FlowState::Replied,
];

fn state_number(state: FlowState) -> u8 {
    STATES.iter().position(|s| *s == state).unwrap_or(0) as u8
}

/// A count as saved: at most [`MAX_SAVED_COUNT`] (unreachable by counting; a firewall restored
/// near it has counted past it since, and its save must restore again).
fn saved(count: u64) -> u64 {
    count.min(MAX_SAVED_COUNT)
}

fn saved_all(counts: &[u64]) -> Vec<u64> {
    counts.iter().map(|&c| saved(c)).collect()
}

impl Firewall {
    /// The live state at `now`.
    pub fn save(&self, now: Instant) -> FirewallState {
        let now_ms = self.clock_ms(now);
        let mut flows = Vec::with_capacity(self.conntrack.len());
        self.conntrack.for_each(|key, flow| {
            flows.push(SavedFlow {
                guest: key.guest,
                remote: key.remote,
                guest_port: key.guest_port,
                remote_port: key.remote_port,
                protocol: key.protocol,
                v6: key.v6,
                origin: flow.origin.index() as u8,
                state: state_number(flow.state),
                fin_from_origin: flow.fin_from_origin,
                fin_from_reply: flow.fin_from_reply,
                idle_ms: now_ms.saturating_sub(flow.last_seen_ms),
                window_age_ms: now_ms.saturating_sub(flow.window_start_ms),
                packets: saved(flow.packets),
                bytes: saved(flow.bytes),
            });
        });
        let c = &self.counters;
        FirewallState {
            iface_id: self.iface_id.clone(),
            guest_mac: self.guest_mac,
            ingress_rule_hits: saved_all(&self.rule_hits[0]),
            egress_rule_hits: saved_all(&self.rule_hits[1]),
            counters: SavedCounters {
                passed_frames: c.passed_frames.map(saved),
                passed_bytes: c.passed_bytes.map(saved),
                dropped_ingress: saved_all(&c.dropped[0]),
                dropped_egress: saved_all(&c.dropped[1]),
                flows_created: saved(c.flows_created),
                flows_ended: saved(c.flows_ended),
                flows_cut_by_update: saved(c.flows_cut_by_update),
            },
            flow_log_records: [
                self.flow_log.records_written,
                self.flow_log.records_lost,
                self.flow_log.records_suppressed,
            ]
            .map(saved),
            flows,
        }
    }

    /// The firewall of interface `iface_id` with `config` (as [`Firewall::new`]), carrying on
    /// from `state` at `now`. Everything in `state` is checked first; on error nothing is
    /// kept (the flow log, if any, was opened and is closed again).
    pub fn restore(
        iface_id: &str,
        config: &FirewallConfig,
        guest_mac: Option<MacAddr>,
        state: &FirewallState,
        now: Instant,
    ) -> Result<Firewall, FirewallStateError> {
        if state.iface_id != iface_id {
            return Err(FirewallStateError::Interface {
                state: state.iface_id.clone(),
                config: iface_id.to_string(),
            });
        }
        if state.guest_mac != guest_mac {
            return Err(FirewallStateError::GuestMac(iface_id.to_string()));
        }
        if state.flows.len() > config.conntrack_max {
            return Err(FirewallStateError::TooManyFlows {
                count: state.flows.len(),
                max: config.conntrack_max,
            });
        }
        let dropped = [
            check_drops("ingress", &state.counters.dropped_ingress)?,
            check_drops("egress", &state.counters.dropped_egress)?,
        ];
        for (direction, hits, rules) in [
            ("ingress", &state.ingress_rule_hits, config.ingress.len()),
            ("egress", &state.egress_rule_hits, config.egress.len()),
        ] {
            if hits.len() != rules {
                return Err(FirewallStateError::RuleHits {
                    direction,
                    count: hits.len(),
                    rules,
                });
            }
        }
        check_counters(state)?;
        // The clock starts far enough ahead that every live flow's last packet is at or
        // after 0 (a flow idle longer than the longest timeout has expired).
        let mut firewall =
            Firewall::with_clock(iface_id, config, guest_mac, (now, LONGEST_TIMEOUT_MS))
                .map_err(FirewallStateError::Firewall)?;
        firewall.rule_hits = [
            state.ingress_rule_hits.clone(),
            state.egress_rule_hits.clone(),
        ];
        let now_ms = LONGEST_TIMEOUT_MS;
        for (index, saved) in state.flows.iter().enumerate() {
            let (key, flow) = checked_flow(index, saved, now_ms)?;
            if flow.is_expired(key.protocol, now_ms) {
                continue;
            }
            if !is_still_allowed(
                &firewall.rules,
                firewall.antispoof.as_ref(),
                &key,
                flow.origin,
            ) {
                return Err(FirewallStateError::NotAllowed(index));
            }
            firewall
                .conntrack
                .insert_restored(key, flow)
                .map_err(|()| FirewallStateError::Duplicate(index))?;
        }
        let c = &state.counters;
        let counters = &mut firewall.counters;
        counters.passed_frames = c.passed_frames;
        counters.passed_bytes = c.passed_bytes;
        counters.dropped = dropped;
        counters.flows_created = c.flows_created;
        counters.flows_ended = c.flows_ended;
        counters.flows_cut_by_update = c.flows_cut_by_update;
        let [written, lost, suppressed] = state.flow_log_records;
        firewall.flow_log.records_written = written;
        firewall.flow_log.records_lost = lost;
        firewall.flow_log.records_suppressed = suppressed;
        Ok(firewall)
    }
}

fn check_drops(
    direction: &'static str,
    saved: &[u64],
) -> Result<[u64; DropReason::ALL.len()], FirewallStateError> {
    saved
        .try_into()
        .map_err(|_| FirewallStateError::DropCounters {
            direction,
            count: saved.len(),
        })
}

/// A saved flow as a table entry at `now_ms`, or why it cannot be one.
fn checked_flow(
    index: usize,
    saved: &SavedFlow,
    now_ms: u64,
) -> Result<(FlowKey, Flow), FirewallStateError> {
    let bad = |what| FirewallStateError::Inconsistent { index, what };
    check_count("flow packet count", saved.packets)?;
    check_count("flow byte count", saved.bytes)?;
    let origin = match saved.origin {
        0 => Direction::Ingress,
        1 => Direction::Egress,
        value => return Err(FirewallStateError::Origin { index, value }),
    };
    let state = *STATES
        .get(usize::from(saved.state))
        .ok_or(FirewallStateError::State {
            index,
            value: saved.state,
        })?;
    if !saved.v6 && (saved.guest > u128::from(u32::MAX) || saved.remote > u128::from(u32::MAX)) {
        return Err(bad("an IPv4 flow with an address wider than 32 bits"));
    }
    let tcp = saved.protocol == PROTO_TCP;
    let tcp_state = matches!(
        state,
        FlowState::TcpOpening
            | FlowState::TcpEstablished
            | FlowState::TcpClosing
            | FlowState::TcpClosed
    );
    if tcp != tcp_state {
        return Err(bad("a TCP state on another protocol, or the reverse"));
    }
    let fins = (saved.fin_from_origin, saved.fin_from_reply);
    let fins_fit = match state {
        FlowState::TcpClosed => true,
        FlowState::TcpClosing => fins != (false, false) && fins != (true, true),
        _ => fins == (false, false),
    };
    if !fins_fit {
        return Err(bad("FIN flags that do not fit the state"));
    }
    let ports_fit = match saved.protocol {
        PROTO_TCP | PROTO_UDP => true,
        PROTO_ICMP | PROTO_ICMPV6 => saved.remote_port == 0,
        _ => saved.guest_port == 0 && saved.remote_port == 0,
    };
    if !ports_fit {
        return Err(bad("ports on a protocol that has none"));
    }
    let key = FlowKey {
        guest: saved.guest,
        remote: saved.remote,
        guest_port: saved.guest_port,
        remote_port: saved.remote_port,
        protocol: saved.protocol,
        v6: saved.v6,
    };
    let flow = Flow {
        origin,
        state,
        fin_from_origin: saved.fin_from_origin,
        fin_from_reply: saved.fin_from_reply,
        last_seen_ms: now_ms.saturating_sub(saved.idle_ms),
        window_start_ms: now_ms.saturating_sub(saved.window_age_ms.max(saved.idle_ms)),
        packets: saved.packets,
        bytes: saved.bytes,
    };
    Ok((key, flow))
}
