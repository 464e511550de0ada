//! The decision on one frame. Order: parse (malformed, length mismatch, source route) -> guest
//! source MAC -> ARP / other ether types -> guest IP anti-spoofing -> non-first fragments
//! (judged by the rules on their IP header alone) -> link configuration that stays on the link
//! (DHCP, neighbour discovery, MLD; see `link_control`) -> ICMP errors about a tracked flow,
//! sent to the quoted packet's sender -> the flow's entry in the connection table -> for a new
//! flow, the compiled rules, then a new entry.

use std::time::Instant;

use super::flow_report::{packet_key, report_flow_end};
use super::{Firewall, Verdict};
use crate::conntrack::FlowState;
use crate::counters::DropReason;
use crate::flow_table::FlowKey;
use crate::frame::{
    is_icmp_error, parse_frame, parse_quoted_packet, Fragment, IpPacket, Payload, Transport,
    PROTO_ICMP, PROTO_ICMPV6, TCP_ACK, TCP_RST, TCP_SYN,
};
use crate::link_control::{is_link_control, DhcpServers};
use crate::net_types::Direction;
use crate::rules::RuleQuery;

const ECHO_REQUEST: u8 = 8;
const ECHO_REQUEST_V6: u8 = 128;
/// The longest ICMP error a router sends (RFC 1812 4.3.2.3).
const MAX_ICMP_ERROR_LEN: usize = 576;
/// The longest ICMPv6 error (RFC 4443 2.4 (c): the IPv6 minimum MTU).
const MAX_ICMPV6_ERROR_LEN: usize = 1280;

/// The ports a flow is tracked by: transport ports, or the echo identifier for ICMP echo.
/// `None` for ICMP other than echo, which is judged packet by packet.
fn tracked_ports(direction: Direction, ip: &IpPacket<'_>) -> Option<(u16, u16)> {
    let (src_port, dst_port) = match ip.transport {
        Transport::Tcp {
            src_port, dst_port, ..
        }
        | Transport::Udp { src_port, dst_port } => (src_port, dst_port),
        Transport::Icmp { .. } => return ip.echo_id().map(|id| (id, 0)),
        Transport::Other => (0, 0),
    };
    Some(match direction {
        Direction::Egress => (src_port, dst_port),
        Direction::Ingress => (dst_port, src_port),
    })
}

/// Whether an allowed packet without an entry opens a tracked flow: not a TCP RST, and for
/// ICMP only an echo request.
fn opens_flow(ip: &IpPacket<'_>) -> bool {
    match ip.transport {
        Transport::Tcp { flags, .. } => flags & TCP_RST == 0,
        Transport::Icmp { icmp_type, .. } => {
            icmp_type
                == if ip.src.v6 {
                    ECHO_REQUEST_V6
                } else {
                    ECHO_REQUEST
                }
        }
        _ => true,
    }
}

fn rule_query(direction: Direction, ip: &IpPacket<'_>) -> RuleQuery {
    let remote = match direction {
        Direction::Egress => ip.dst,
        Direction::Ingress => ip.src,
    };
    let key = match ip.transport {
        Transport::Tcp { dst_port, .. } | Transport::Udp { dst_port, .. } => dst_port,
        Transport::Icmp { icmp_type, .. } => u16::from(icmp_type),
        Transport::Other => 0,
    };
    RuleQuery {
        remote,
        protocol: ip.protocol,
        key,
    }
}

impl Firewall {
    pub(super) fn filter(
        &mut self,
        direction: Direction,
        headers: &[u8],
        frame_len: usize,
        now: Instant,
    ) -> Verdict {
        let now_ms = self.clock_ms(now);
        match self.decide(direction, headers, frame_len, now_ms) {
            Ok(()) => {
                self.counters.count_pass(direction, frame_len);
                Verdict::Pass
            }
            Err(reason) => {
                self.counters.count_drop(direction, reason);
                Verdict::Drop(reason)
            }
        }
    }

    fn decide(
        &mut self,
        direction: Direction,
        headers: &[u8],
        frame_len: usize,
        now_ms: u64,
    ) -> Result<(), DropReason> {
        let frame = parse_frame(headers, frame_len).map_err(|e| e.drop_reason())?;
        let guard = match direction {
            Direction::Egress => self.antispoof.as_ref(),
            Direction::Ingress => None,
        };
        if let Some(guard) = guard {
            guard.check_source_mac(frame.src_mac)?;
        }
        match frame.payload {
            Payload::Arp(arp) => guard.map_or(Ok(()), |guard| guard.check_arp(&arp)),
            Payload::Other => Err(DropReason::DefaultDeny),
            Payload::Ip(ip) => {
                if let Some(guard) = guard {
                    guard.check_ip(&ip)?;
                }
                self.decide_ip(direction, &ip, frame_len, now_ms)
            }
        }
    }

    fn decide_ip(
        &mut self,
        direction: Direction,
        ip: &IpPacket<'_>,
        frame_len: usize,
        now_ms: u64,
    ) -> Result<(), DropReason> {
        if ip.fragment == Fragment::Later {
            return self.decide_later_fragment(direction, ip);
        }
        if is_link_control(direction, ip, DhcpServers(&self.config.dhcp_servers)) {
            return Ok(());
        }
        if let Transport::Icmp { icmp_type, .. } = ip.transport {
            if is_icmp_error(ip.src.v6, icmp_type) && self.is_about_tracked_flow(direction, ip) {
                return Ok(());
            }
        }
        let ports = tracked_ports(direction, ip);
        let tcp_flags = match ip.transport {
            Transport::Tcp { flags, .. } => Some(flags),
            _ => None,
        };
        if let Some(key) = ports.map(|ports| packet_key(direction, ip, ports)) {
            if let Some(entry) = self.conntrack.find(&key) {
                let flow = self.conntrack.flow(entry);
                let new_syn = tcp_flags.is_some_and(|flags| flags & (TCP_SYN | TCP_ACK) == TCP_SYN);
                let reopened = new_syn && flow.state == FlowState::TcpClosed;
                if !reopened && !flow.is_expired(key.protocol, now_ms) {
                    self.conntrack
                        .flow_mut(entry)
                        .observe(direction, tcp_flags, frame_len, now_ms);
                    return Ok(());
                }
                let (key, mut flow) = self.conntrack.remove(entry);
                report_flow_end(&mut self.flow_log, &mut self.counters, &key, &mut flow);
            }
        }
        self.decide_new_flow(direction, ip, ports, (tcp_flags, frame_len), now_ms)
    }

    fn decide_new_flow(
        &mut self,
        direction: Direction,
        ip: &IpPacket<'_>,
        ports: Option<(u16, u16)>,
        packet: (Option<u8>, usize),
        now_ms: u64,
    ) -> Result<(), DropReason> {
        let frame_len = packet.1;
        let decision = self.rules.evaluate(direction, &rule_query(direction, ip));
        if let Some(rule) = decision.rule {
            self.rule_hits[direction.index()][rule] += 1;
        }
        let key = packet_key(direction, ip, ports.unwrap_or((0, 0)));
        if !decision.allow {
            self.log_reject(key, direction, frame_len, now_ms);
            return Err(match decision.rule {
                Some(_) => DropReason::RuleDeny,
                None => DropReason::DefaultDeny,
            });
        }
        if ports.is_none() || !opens_flow(ip) {
            return Ok(());
        }
        let Firewall {
            conntrack,
            flow_log,
            counters,
            ..
        } = self;
        let inserted = conntrack.insert(key, direction, packet, now_ms, |old_key, mut old_flow| {
            report_flow_end(flow_log, counters, &old_key, &mut old_flow);
        });
        if inserted.is_err() {
            self.log_reject(key, direction, frame_len, now_ms);
            return Err(DropReason::ConntrackFull);
        }
        self.counters.flows_created += 1;
        Ok(())
    }

    /// A fragment other than the first carries no ports: with `allow_fragments` it is judged
    /// by the rules of its direction that do not name ports or ICMP types, on its remote
    /// address and protocol (a port rule cannot match it; the first fragment, which has the
    /// ports, was judged by every rule). Not tracked, not logged.
    fn decide_later_fragment(
        &mut self,
        direction: Direction,
        ip: &IpPacket<'_>,
    ) -> Result<(), DropReason> {
        if !self.config.allow_fragments {
            return Err(DropReason::Fragment);
        }
        let decision = self
            .rules
            .evaluate_without_key(direction, &rule_query(direction, ip));
        if let Some(rule) = decision.rule {
            self.rule_hits[direction.index()][rule] += 1;
        }
        match (decision.allow, decision.rule) {
            (true, _) => Ok(()),
            (false, Some(_)) => Err(DropReason::RuleDeny),
            (false, None) => Err(DropReason::DefaultDeny),
        }
    }

    /// Whether an ICMP error is about a packet of a tracked flow (as a PMTU or unreachable
    /// message about a connection is); such errors pass both ways. The error must go back to
    /// the quoted packet's sender (its source was checked by anti-spoofing when it is the
    /// guest's), quote a complete IP header and 8 bytes of transport header, be unfragmented
    /// and no longer than RFC 1812 (576 bytes) or RFC 4443 (1280 bytes) allow.
    fn is_about_tracked_flow(&self, direction: Direction, ip: &IpPacket<'_>) -> bool {
        let max_len = if ip.src.v6 {
            MAX_ICMPV6_ERROR_LEN
        } else {
            MAX_ICMP_ERROR_LEN
        };
        if ip.fragment != Fragment::Whole || ip.ip_len > max_len {
            return false;
        }
        let Some(quoted) = parse_quoted_packet(ip.src.v6, ip.l4) else {
            return false;
        };
        if quoted.src.v6 != ip.src.v6 || ip.dst != quoted.src {
            return false;
        }
        // The quoted packet travelled the other way: from the guest for an ingress error.
        let (guest, remote, guest_port, remote_port) = match direction {
            Direction::Ingress => (quoted.src, quoted.dst, quoted.src_port, quoted.dst_port),
            Direction::Egress => (quoted.dst, quoted.src, quoted.dst_port, quoted.src_port),
        };
        let (guest_port, remote_port) = match quoted.protocol {
            PROTO_ICMP | PROTO_ICMPV6 => (quoted.src_port, 0),
            _ => (guest_port, remote_port),
        };
        let key = FlowKey {
            guest: guest.bits,
            remote: remote.bits,
            guest_port,
            remote_port,
            protocol: quoted.protocol,
            v6: quoted.src.v6,
        };
        self.conntrack.find(&key).is_some()
    }
}
