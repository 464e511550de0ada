//! Turning tracked and rejected flows into flow-log records: each flow once per interval and
//! when it ends; rejected packets aggregated per 5-tuple and reported once per interval.

use super::Firewall;
use crate::antispoof::AntiSpoof;
use crate::conntrack::Flow;
use crate::counters::Counters;
use crate::flow_log::{FlowAction, FlowLog, FlowRecord};
use crate::flow_table::FlowKey;
use crate::frame::{IpPacket, PROTO_ICMP, PROTO_ICMPV6};
use crate::net_types::{Addr, Direction};
use crate::rules::{CompiledRules, RuleQuery};

const ECHO_REQUEST: u8 = 8;
const ECHO_REQUEST_V6: u8 = 128;

/// Rejected packets of one 5-tuple since the last report.
#[derive(Clone, Copy, Debug)]
pub(super) struct RejectTally {
    direction: Direction,
    packets: u64,
    bytes: u64,
    first_ms: u64,
    last_ms: u64,
}

/// Counts in one record: packets, bytes, first and last packet times.
struct Window {
    packets: u64,
    bytes: u64,
    start_ms: u64,
    end_ms: u64,
}

fn record(key: &FlowKey, origin: Direction, window: Window, action: FlowAction) -> FlowRecord {
    let guest = Addr {
        bits: key.guest,
        v6: key.v6,
    };
    let remote = Addr {
        bits: key.remote,
        v6: key.v6,
    };
    let (src, dst, src_port, dst_port) = match origin {
        Direction::Egress => (guest, remote, key.guest_port, key.remote_port),
        Direction::Ingress => (remote, guest, key.remote_port, key.guest_port),
    };
    FlowRecord {
        src,
        dst,
        src_port,
        dst_port,
        protocol: key.protocol,
        direction: origin,
        packets: window.packets,
        bytes: window.bytes,
        start_ms: window.start_ms,
        end_ms: window.end_ms,
        action,
    }
}

/// Pushes the flow's last window (if any) and counts its end.
pub(super) fn report_flow_end(
    log: &mut FlowLog,
    counters: &mut Counters,
    key: &FlowKey,
    flow: &mut Flow,
) {
    counters.flows_ended += 1;
    report_window(log, key, flow);
}

fn report_window(log: &mut FlowLog, key: &FlowKey, flow: &mut Flow) {
    let end_ms = flow.last_seen_ms;
    if let Some((packets, bytes, start_ms)) = flow.take_window() {
        let window = Window {
            packets,
            bytes,
            start_ms,
            end_ms,
        };
        log.push(record(key, flow.origin, window, FlowAction::Accept));
    }
}

/// The query that admitted a tracked flow, rebuilt from its key and origin.
pub(super) fn origin_query(key: &FlowKey, origin: Direction) -> RuleQuery {
    let remote = Addr {
        bits: key.remote,
        v6: key.v6,
    };
    let rule_key = match key.protocol {
        PROTO_ICMP if !key.v6 => u16::from(ECHO_REQUEST),
        PROTO_ICMPV6 if key.v6 => u16::from(ECHO_REQUEST_V6),
        _ => match origin {
            Direction::Egress => key.remote_port,
            Direction::Ingress => key.guest_port,
        },
    };
    RuleQuery {
        remote,
        protocol: key.protocol,
        key: rule_key,
    }
}

/// Whether the rules admit a tracked flow that `origin` opened and, for a flow the guest
/// opened, the guest still owns its address (a rule update, and a restored snapshot, keep
/// only such flows).
pub(crate) fn is_still_allowed(
    rules: &CompiledRules,
    antispoof: Option<&AntiSpoof>,
    key: &FlowKey,
    origin: Direction,
) -> bool {
    let guest = Addr {
        bits: key.guest,
        v6: key.v6,
    };
    let owned = origin == Direction::Ingress || antispoof.is_none_or(|guard| guard.owns(guest));
    owned && rules.evaluate(origin, &origin_query(key, origin)).allow
}

impl Firewall {
    pub(super) fn expire_flows_and_report(&mut self, now_ms: u64) {
        let interval_ms = self.config.flow_log_interval_secs * 1_000;
        let Firewall {
            conntrack,
            flow_log,
            counters,
            ..
        } = self;
        let logging = flow_log.is_enabled();
        conntrack.retain(|key, flow| {
            if logging && !flow_log.has_room(1) {
                // Off the packet path: make room rather than lose records.
                let _ = flow_log.write_out(now_ms);
            }
            if flow.is_expired(key.protocol, now_ms) {
                report_flow_end(flow_log, counters, key, flow);
                return false;
            }
            if logging && now_ms.saturating_sub(flow.window_start_ms) >= interval_ms {
                report_window(flow_log, key, flow);
            }
            true
        });
        if logging && now_ms.saturating_sub(self.last_reject_report_ms) >= interval_ms {
            self.last_reject_report_ms = now_ms;
            let Firewall {
                rejects, flow_log, ..
            } = self;
            rejects.retain(|key, tally| {
                if !flow_log.has_room(1) {
                    let _ = flow_log.write_out(now_ms);
                }
                let window = Window {
                    packets: tally.packets,
                    bytes: tally.bytes,
                    start_ms: tally.first_ms,
                    end_ms: tally.last_ms,
                };
                flow_log.push(record(key, tally.direction, window, FlowAction::Reject));
                false
            });
        }
    }

    /// After an update: drops the flows that the new rules would refuse, and the guest's own
    /// flows from addresses it no longer owns.
    pub(super) fn cut_flows_no_longer_allowed(&mut self) {
        let Firewall {
            conntrack,
            rules,
            antispoof,
            flow_log,
            counters,
            ..
        } = self;
        conntrack.retain(|key, flow| {
            if is_still_allowed(rules, antispoof.as_ref(), key, flow.origin) {
                return true;
            }
            counters.flows_cut_by_update += 1;
            report_flow_end(flow_log, counters, key, flow);
            false
        });
    }

    /// Aggregates a rejected packet for the flow log.
    pub(super) fn log_reject(
        &mut self,
        key: FlowKey,
        direction: Direction,
        frame_len: usize,
        now_ms: u64,
    ) {
        if !self.flow_log.is_enabled() {
            return;
        }
        if let Some(entry) = self.rejects.find(&key) {
            let tally = self.rejects.value_mut(entry);
            tally.packets += 1;
            tally.bytes += frame_len as u64;
            tally.last_ms = now_ms;
            return;
        }
        let tally = RejectTally {
            direction,
            packets: 1,
            bytes: frame_len as u64,
            first_ms: now_ms,
            last_ms: now_ms,
        };
        if self.rejects.insert(key, tally).is_err() {
            self.flow_log.count_lost();
        }
    }
}

/// The 5-tuple of a packet as seen from the guest (ports 0 where it has none).
pub(super) fn packet_key(direction: Direction, ip: &IpPacket<'_>, ports: (u16, u16)) -> FlowKey {
    let (guest, remote) = match direction {
        Direction::Egress => (ip.src, ip.dst),
        Direction::Ingress => (ip.dst, ip.src),
    };
    FlowKey {
        guest: guest.bits,
        remote: remote.bits,
        guest_port: ports.0,
        remote_port: ports.1,
        protocol: ip.protocol,
        v6: ip.src.v6,
    }
}
