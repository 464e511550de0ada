//! What `GET /network-interfaces/{id}/firewall` reports of a live firewall: its rules, how
//! often each matched, its frame and flow counters, its connection table and its flow log.
//! Typed here, where it is gathered; the API serialises it once.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::FirewallConfig;

/// The status of one interface's firewall.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FirewallStatus {
    /// The interface.
    pub iface_id: String,
    /// True when the guest's MAC and addresses are enforced.
    pub anti_spoofing: bool,
    /// The configuration in force.
    pub rules: FirewallConfig,
    /// Frames matched by each rule, in rule order.
    pub rule_hits: RuleHits,
    /// Frame and flow counters.
    pub counters: CounterStatus,
    /// The connection table's fill.
    pub conntrack: ConntrackStatus,
    /// The flow log's records.
    pub flow_log: FlowLogStatus,
}

/// Frames matched by each rule of each direction, in rule order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleHits {
    /// Ingress rules.
    pub ingress: Vec<u64>,
    /// Egress rules.
    pub egress: Vec<u64>,
}

/// Frames passed and dropped one way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DirectionCounters {
    /// Frames let through.
    pub passed_frames: u64,
    /// Bytes let through.
    pub passed_bytes: u64,
    /// Frames dropped, by reason name (every reason, zeros included).
    pub dropped: BTreeMap<&'static str, u64>,
}

/// The firewall's frame and flow counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CounterStatus {
    /// To the guest.
    pub ingress: DirectionCounters,
    /// From the guest.
    pub egress: DirectionCounters,
    /// Frames dropped both ways, by reason name.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Flows added to the connection table.
    pub flows_created: u64,
    /// Flows removed: expired, closed, or cut by a rule update.
    pub flows_ended: u64,
    /// Flows cut because an update no longer allows them.
    pub flows_cut_by_update: u64,
}

/// The connection table's fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ConntrackStatus {
    /// Flows tracked now.
    pub flows: usize,
    /// The most it holds.
    pub max: usize,
}

/// The flow log's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FlowLogStatus {
    /// True when a flow log is configured.
    pub enabled: bool,
    /// Records written.
    pub records_written: u64,
    /// Records lost to a full ring or a failed write.
    pub records_lost: u64,
    /// Records over the budget, not written.
    pub records_suppressed: u64,
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use crate::{Firewall, FirewallConfig};

    #[test]
    fn status_serialises_to_the_documented_json_shape() {
        let config: FirewallConfig = serde_json::from_str("{}").unwrap();
        let fw = Firewall::new("eth0", &config, None, Instant::now()).unwrap();
        let status = serde_json::to_value(fw.status()).unwrap();
        let zeros: serde_json::Map<String, serde_json::Value> = crate::DropReason::ALL
            .iter()
            .map(|reason| (reason.name().to_string(), json!(0)))
            .collect();
        let side = json!({"passed_frames": 0, "passed_bytes": 0, "dropped": zeros});
        assert_eq!(
            status,
            json!({
                "iface_id": "eth0",
                "anti_spoofing": false,
                "rules": serde_json::to_value(&config).unwrap(),
                "rule_hits": {"ingress": [], "egress": []},
                "counters": {
                    "ingress": side, "egress": side, "dropped": zeros,
                    "flows_created": 0, "flows_ended": 0, "flows_cut_by_update": 0,
                },
                "conntrack": {"flows": 0, "max": fw.status().conntrack.max},
                "flow_log": {
                    "enabled": false, "records_written": 0, "records_lost": 0,
                    "records_suppressed": 0,
                },
            })
        );
    }
}
