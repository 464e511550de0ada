//! Why frames are dropped, and the counters the firewall keeps (reported by `status` and
//! copied into the VMM's metrics by the net device).

use std::collections::BTreeMap;

use crate::net_types::Direction;
use crate::status::{CounterStatus, DirectionCounters};

/// Why the firewall dropped a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A guest frame whose source MAC is not `guest_mac`.
    SpoofMac,
    /// A guest IP packet whose source address is not in `allowed_ips` (nor the guest's
    /// link-local address).
    SpoofIp,
    /// A guest ARP packet whose sender MAC or IP is not the guest's, or a neighbour-discovery
    /// message claiming an address the guest does not own or a link-layer address that is not
    /// `guest_mac`.
    SpoofArp,
    /// The guest answering as a DHCP(v6) server or sending IPv6 router advertisements or
    /// redirects.
    RogueDhcpRa,
    /// A rule with action `deny` matched the new flow.
    RuleDeny,
    /// No rule matched the new flow and the direction's default is `deny` (and every frame that
    /// is neither ARP nor IP).
    DefaultDeny,
    /// The rules allowed a new flow but the connection table is full.
    ConntrackFull,
    /// A non-first IP fragment, while `allow_fragments` is false.
    Fragment,
    /// A truncated or malformed frame, a VLAN-tagged frame, too many IPv6 extension headers,
    /// malformed IPv4 options, or a transport header running past the IP datagram.
    Malformed,
    /// An IP datagram whose length (IPv4 total length, IPv6 payload length) disagrees with
    /// the frame: longer than the frame, or followed by more than Ethernet minimum-size padding.
    LengthMismatch,
    /// IPv4 loose or strict source routing, an IPv6 type 0 routing header, or any IPv6 routing
    /// header with segments left.
    SourceRoute,
}

impl DropReason {
    /// Every reason, in the order of the counters.
    pub const ALL: [DropReason; 11] = [
        DropReason::SpoofMac,
        DropReason::SpoofIp,
        DropReason::SpoofArp,
        DropReason::RogueDhcpRa,
        DropReason::RuleDeny,
        DropReason::DefaultDeny,
        DropReason::ConntrackFull,
        DropReason::Fragment,
        DropReason::Malformed,
        DropReason::LengthMismatch,
        DropReason::SourceRoute,
    ];

    /// The name used in metrics and in the API.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::SpoofMac => "spoof_mac",
            DropReason::SpoofIp => "spoof_ip",
            DropReason::SpoofArp => "spoof_arp",
            DropReason::RogueDhcpRa => "rogue_dhcp_ra",
            DropReason::RuleDeny => "rule_deny",
            DropReason::DefaultDeny => "default_deny",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::Fragment => "fragment",
            DropReason::Malformed => "malformed",
            DropReason::LengthMismatch => "length_mismatch",
            DropReason::SourceRoute => "source_route",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Frame and flow counters of one firewall; plain integers owned by the VMM thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub(crate) passed_frames: [u64; 2],
    pub(crate) passed_bytes: [u64; 2],
    pub(crate) dropped: [[u64; DropReason::ALL.len()]; 2],
    /// Flows added to the connection table.
    pub flows_created: u64,
    /// Flows removed: expired, closed, or cut by a rule update.
    pub flows_ended: u64,
    /// Flows cut because an update no longer allows them.
    pub flows_cut_by_update: u64,
}

impl Counters {
    pub(crate) fn count_pass(&mut self, direction: Direction, bytes: usize) {
        let side = direction.index();
        self.passed_frames[side] += 1;
        self.passed_bytes[side] += bytes as u64;
    }

    pub(crate) fn count_drop(&mut self, direction: Direction, reason: DropReason) {
        self.dropped[direction.index()][reason.index()] += 1;
    }

    /// Frames passed in `direction`.
    pub fn passed(&self, direction: Direction) -> u64 {
        self.passed_frames[direction.index()]
    }

    /// Frames dropped in `direction` for `reason`.
    pub fn dropped(&self, direction: Direction, reason: DropReason) -> u64 {
        self.dropped[direction.index()][reason.index()]
    }

    /// Frames dropped for `reason` in both directions.
    pub fn dropped_total(&self, reason: DropReason) -> u64 {
        self.dropped(Direction::Ingress, reason) + self.dropped(Direction::Egress, reason)
    }

    /// The counters as `GET /network-interfaces/{id}/firewall` reports them.
    pub fn status(&self) -> CounterStatus {
        let side = |direction: Direction| DirectionCounters {
            passed_frames: self.passed_frames[direction.index()],
            passed_bytes: self.passed_bytes[direction.index()],
            dropped: by_reason(|reason| self.dropped(direction, reason)),
        };
        CounterStatus {
            ingress: side(Direction::Ingress),
            egress: side(Direction::Egress),
            dropped: by_reason(|reason| self.dropped_total(reason)),
            flows_created: self.flows_created,
            flows_ended: self.flows_ended,
            flows_cut_by_update: self.flows_cut_by_update,
        }
    }
}

/// One count per drop reason, by name.
fn by_reason(count: impl Fn(DropReason) -> u64) -> BTreeMap<&'static str, u64> {
    DropReason::ALL
        .iter()
        .map(|&reason| (reason.name(), count(reason)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_indexed_in_order() {
        for (position, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), position);
        }
    }

    #[test]
    fn drops_are_counted_per_direction_and_in_total() {
        let mut counters = Counters::default();
        counters.count_drop(Direction::Egress, DropReason::SpoofMac);
        counters.count_drop(Direction::Ingress, DropReason::SpoofMac);
        counters.count_pass(Direction::Egress, 100);
        assert_eq!(counters.dropped(Direction::Egress, DropReason::SpoofMac), 1);
        assert_eq!(counters.dropped_total(DropReason::SpoofMac), 2);
        let json = serde_json::to_value(counters.status()).unwrap();
        assert_eq!(json["dropped"]["spoof_mac"], 2);
        assert_eq!(json["egress"]["passed_bytes"], 100);
        assert_eq!(json["ingress"]["dropped"]["malformed"], 0);
    }
}
