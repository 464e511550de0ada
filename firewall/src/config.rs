//! The `firewall` object of a network interface (see DESIGN.md, "Config file and firewall"):
//! serde types with unknown fields refused, and the checks that serde cannot express.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::net_types::{Cidr, MacAddr, PortRange};

/// `conntrack_max` when the field is absent.
pub const DEFAULT_CONNTRACK_MAX: usize = 65_536;
/// The largest `conntrack_max` accepted (4 Mi flows).
pub const MAX_CONNTRACK_MAX: usize = 1 << 22;
/// `flow_log_interval_secs` when the field is absent.
pub const DEFAULT_FLOW_LOG_INTERVAL_SECS: u64 = 60;
/// The longest flow-log interval accepted (one day).
pub const MAX_FLOW_LOG_INTERVAL_SECS: u64 = 86_400;
/// The most rules accepted per direction.
pub const MAX_RULES_PER_DIRECTION: usize = 65_536;
/// The most `allowed_ips` entries accepted.
pub const MAX_ALLOWED_IPS: usize = 1_024;
/// The most `dhcp_servers` entries accepted.
pub const MAX_DHCP_SERVERS: usize = 16;

/// Errors of [`FirewallConfig::validate`]; each message names the offending field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `ports` on a rule whose protocol has none.
    #[error("{direction} rule {index}: \"ports\" needs proto \"tcp\" or \"udp\", not \"{proto}\"")]
    PortsWithoutPorts {
        direction: &'static str,
        index: usize,
        proto: &'static str,
    },
    /// `icmp_type` on a rule that is not ICMP.
    #[error("{direction} rule {index}: \"icmp_type\" needs proto \"icmp\" or \"icmpv6\", not \"{proto}\"")]
    IcmpTypeWithoutIcmp {
        direction: &'static str,
        index: usize,
        proto: &'static str,
    },
    /// `icmp` with an IPv6 CIDR or `icmpv6` with an IPv4 one.
    #[error(
        "{direction} rule {index}: proto \"{proto}\" cannot match the {family} cidr \"{cidr}\""
    )]
    IcmpFamily {
        direction: &'static str,
        index: usize,
        proto: &'static str,
        family: &'static str,
        cidr: String,
    },
    /// Too many rules in one direction.
    #[error("\"{direction}\" has {count} rules; at most {MAX_RULES_PER_DIRECTION} are accepted")]
    TooManyRules {
        direction: &'static str,
        count: usize,
    },
    /// Too many `allowed_ips`.
    #[error("\"allowed_ips\" has {0} entries; at most {MAX_ALLOWED_IPS} are accepted")]
    TooManyAllowedIps(usize),
    /// `conntrack_max` out of range.
    #[error("\"conntrack_max\" is {0}; it must be 1 to {MAX_CONNTRACK_MAX}")]
    ConntrackMax(usize),
    /// `flow_log_interval_secs` out of range.
    #[error("\"flow_log_interval_secs\" is {0}; it must be 1 to {MAX_FLOW_LOG_INTERVAL_SECS}")]
    FlowLogInterval(u64),
    /// An empty `flow_log` path.
    #[error("\"flow_log\" is an empty path")]
    EmptyFlowLogPath,
    /// Too many `dhcp_servers`.
    #[error("\"dhcp_servers\" has {0} entries; at most {MAX_DHCP_SERVERS} are accepted")]
    TooManyDhcpServers(usize),
    /// A `dhcp_servers` entry that is not a unicast address.
    #[error("\"dhcp_servers\" entry \"{0}\" is not a unicast address")]
    DhcpServer(IpAddr),
    /// `allowed_ips` on an interface without `guest_mac`: anti-spoofing needs the MAC, and
    /// without it the list would be silently ignored.
    #[error("\"allowed_ips\" needs \"guest_mac\" on the interface: anti-spoofing is keyed by the guest's MAC")]
    AllowedIpsWithoutGuestMac,
}

/// What a rule or a default does with a matching new flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the flow through (and its replies, by connection tracking).
    Allow,
    /// Drop the packet.
    Deny,
}

/// The protocol a rule matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (IPv4 or IPv6).
    Tcp,
    /// UDP (IPv4 or IPv6).
    Udp,
    /// ICMP (IPv4 only).
    Icmp,
    /// ICMPv6 (IPv6 only).
    Icmpv6,
    /// Every IP protocol of both families.
    #[default]
    Any,
}

impl Proto {
    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Icmpv6 => "icmpv6",
            Proto::Any => "any",
        }
    }
}

/// One security-group rule. The CIDR matches the remote address (the source for ingress, the
/// destination for egress); `ports` the destination port; `icmp_type` the ICMP type.
/// An absent field matches everything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Allow or deny.
    pub action: Action,
    /// Protocol; `any` when absent.
    #[serde(default)]
    pub proto: Proto,
    /// Remote prefix; both families when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<Cidr>,
    /// Destination ports ("22" or "8000-8080"); tcp and udp only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// ICMP type; icmp and icmpv6 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
}

/// The `firewall` object of a network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallConfig {
    /// Source prefixes the guest may send from (anti-spoofing, when `guest_mac` is set).
    /// The IPv6 link-local address derived from `guest_mac` is always allowed.
    #[serde(default)]
    pub allowed_ips: Vec<Cidr>,
    /// Rules for traffic to the guest, first match wins.
    #[serde(default)]
    pub ingress: Vec<RuleConfig>,
    /// Rules for traffic from the guest, first match wins.
    #[serde(default)]
    pub egress: Vec<RuleConfig>,
    /// New inbound flows no rule matched: `deny` when absent.
    #[serde(default = "default_ingress")]
    pub default_ingress: Action,
    /// New outbound flows no rule matched: `allow` when absent.
    #[serde(default = "default_egress")]
    pub default_egress: Action,
    /// Pass IP fragments other than the first (which carry no ports); dropped when false.
    #[serde(default)]
    pub allow_fragments: bool,
    /// Flow-log file (JSON lines), opened in append mode; no log when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_log: Option<PathBuf>,
    /// Seconds between two records of a long-lived flow.
    #[serde(default = "default_flow_log_interval_secs")]
    pub flow_log_interval_secs: u64,
    /// Capacity of the connection table, fixed when the interface is created.
    #[serde(default = "default_conntrack_max")]
    pub conntrack_max: usize,
    /// DHCP and DHCPv6 servers on the link that may be reached (and answer) by unicast
    /// without rules; broadcast DHCP, DHCPv6 to ff02::1:2 and link-local DHCPv6 replies need
    /// no entry. None when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dhcp_servers: Vec<IpAddr>,
}

fn default_ingress() -> Action {
    Action::Deny
}

fn default_egress() -> Action {
    Action::Allow
}

fn default_flow_log_interval_secs() -> u64 {
    DEFAULT_FLOW_LOG_INTERVAL_SECS
}

fn default_conntrack_max() -> usize {
    DEFAULT_CONNTRACK_MAX
}

impl Default for FirewallConfig {
    /// What `"firewall": {}` means: no rules, inbound denied, outbound allowed.
    fn default() -> Self {
        FirewallConfig {
            allowed_ips: Vec::new(),
            ingress: Vec::new(),
            egress: Vec::new(),
            default_ingress: default_ingress(),
            default_egress: default_egress(),
            allow_fragments: false,
            flow_log: None,
            flow_log_interval_secs: DEFAULT_FLOW_LOG_INTERVAL_SECS,
            conntrack_max: DEFAULT_CONNTRACK_MAX,
            dhcp_servers: Vec::new(),
        }
    }
}

impl FirewallConfig {
    /// For an interface with a `guest_mac` but no `firewall` object: anti-spoofing of the MAC
    /// (and ARP sender MAC, DHCP server and router advertisements) only; every address and
    /// every flow allowed.
    pub fn mac_only() -> Self {
        let any_v4: Cidr = Cidr::any(false);
        let any_v6: Cidr = Cidr::any(true);
        FirewallConfig {
            allowed_ips: vec![any_v4, any_v6],
            default_ingress: Action::Allow,
            ..FirewallConfig::default()
        }
    }

    /// Checks what serde cannot: field combinations and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.allowed_ips.len() > MAX_ALLOWED_IPS {
            return Err(ConfigError::TooManyAllowedIps(self.allowed_ips.len()));
        }
        validate_rules("ingress", &self.ingress)?;
        validate_rules("egress", &self.egress)?;
        if !(1..=MAX_CONNTRACK_MAX).contains(&self.conntrack_max) {
            return Err(ConfigError::ConntrackMax(self.conntrack_max));
        }
        if !(1..=MAX_FLOW_LOG_INTERVAL_SECS).contains(&self.flow_log_interval_secs) {
            return Err(ConfigError::FlowLogInterval(self.flow_log_interval_secs));
        }
        if self
            .flow_log
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err(ConfigError::EmptyFlowLogPath);
        }
        if self.dhcp_servers.len() > MAX_DHCP_SERVERS {
            return Err(ConfigError::TooManyDhcpServers(self.dhcp_servers.len()));
        }
        if let Some(server) = self.dhcp_servers.iter().find(|ip| !is_unicast(ip)) {
            return Err(ConfigError::DhcpServer(*server));
        }
        Ok(())
    }

    /// [`FirewallConfig::validate`] plus the checks that depend on the interface: `allowed_ips`
    /// needs a `guest_mac` (anti-spoofing is off without one).
    pub fn validate_for_interface(&self, guest_mac: Option<MacAddr>) -> Result<(), ConfigError> {
        self.validate()?;
        if guest_mac.is_none() && !self.allowed_ips.is_empty() {
            return Err(ConfigError::AllowedIpsWithoutGuestMac);
        }
        Ok(())
    }
}

fn is_unicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

fn validate_rules(direction: &'static str, rules: &[RuleConfig]) -> Result<(), ConfigError> {
    if rules.len() > MAX_RULES_PER_DIRECTION {
        return Err(ConfigError::TooManyRules {
            direction,
            count: rules.len(),
        });
    }
    for (index, rule) in rules.iter().enumerate() {
        let proto = rule.proto.name();
        if rule.ports.is_some() && !matches!(rule.proto, Proto::Tcp | Proto::Udp) {
            return Err(ConfigError::PortsWithoutPorts {
                direction,
                index,
                proto,
            });
        }
        if rule.icmp_type.is_some() && !matches!(rule.proto, Proto::Icmp | Proto::Icmpv6) {
            return Err(ConfigError::IcmpTypeWithoutIcmp {
                direction,
                index,
                proto,
            });
        }
        if let Some(cidr) = rule.cidr {
            let family = if cidr.is_v6() { "IPv6" } else { "IPv4" };
            let mismatch = match rule.proto {
                Proto::Icmp => cidr.is_v6(),
                Proto::Icmpv6 => !cidr.is_v6(),
                _ => false,
            };
            if mismatch {
                let cidr = cidr.to_string();
                return Err(ConfigError::IcmpFamily {
                    direction,
                    index,
                    proto,
                    family,
                    cidr,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FirewallConfig, String> {
        let config: FirewallConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn design_example_parses_with_defaults() {
        let config = parse(
            r#"{"allowed_ips": ["172.16.0.2/32"],
                "ingress": [{"action": "allow", "proto": "tcp", "ports": "22", "cidr": "0.0.0.0/0"}],
                "egress": [{"action": "allow", "proto": "any", "cidr": "0.0.0.0/0"}],
                "default_ingress": "deny", "default_egress": "allow",
                "flow_log": "flows.jsonl"}"#,
        )
        .unwrap();
        assert_eq!(
            config.ingress[0].ports,
            Some(PortRange {
                first: 22,
                last: 22
            })
        );
        assert_eq!(config.flow_log_interval_secs, 60);
        assert_eq!(config.conntrack_max, 65_536);
        assert!(!config.allow_fragments);
        let empty = parse("{}").unwrap();
        assert_eq!(empty, FirewallConfig::default());
        assert_eq!(empty.default_ingress, Action::Deny);
        assert_eq!(empty.default_egress, Action::Allow);
    }

    #[test]
    fn config_round_trips_through_json() {
        let config = parse(
            r#"{"ingress": [{"action": "deny", "proto": "udp", "ports": "8000-8080",
                             "cidr": "fd00::/8"}]}"#,
        )
        .unwrap();
        let text = serde_json::to_string(&config).unwrap();
        assert!(text.contains(r#""ports":"8000-8080""#), "{text}");
        assert!(text.contains(r#""cidr":"fd00::/8""#), "{text}");
        assert_eq!(parse(&text).unwrap(), config);
    }

    #[test]
    fn unknown_fields_and_values_are_refused() {
        let err = parse(r#"{"ingres": []}"#).unwrap_err();
        assert!(err.contains("unknown field `ingres`"), "{err}");
        let err = parse(r#"{"ingress": [{"action": "allow", "port": "22"}]}"#).unwrap_err();
        assert!(err.contains("unknown field `port`"), "{err}");
        let err = parse(r#"{"ingress": [{"action": "allow", "proto": "tpc"}]}"#).unwrap_err();
        assert!(err.contains("unknown variant `tpc`"), "{err}");
        let err = parse(r#"{"egress": [{"action": "allow", "cidr": "10.0.0.0/40"}]}"#).unwrap_err();
        assert!(err.contains("prefix length"), "{err}");
        let err = parse(r#"{"egress": [{"action": "allow", "proto": "tcp", "ports": "9-1"}]}"#)
            .unwrap_err();
        assert!(err.contains("Invalid ports \"9-1\""), "{err}");
    }

    #[test]
    fn field_combinations_are_checked() {
        let err = parse(r#"{"ingress": [{"action": "allow", "proto": "icmp", "ports": "1"}]}"#)
            .unwrap_err();
        assert_eq!(
            err,
            "ingress rule 0: \"ports\" needs proto \"tcp\" or \"udp\", not \"icmp\""
        );
        let err = parse(
            r#"{"egress": [{"action": "allow"}, {"action": "allow", "proto": "tcp", "icmp_type": 8}]}"#,
        )
        .unwrap_err();
        assert!(err.starts_with("egress rule 1: \"icmp_type\""), "{err}");
        let err = parse(r#"{"ingress": [{"action": "allow", "proto": "icmp", "cidr": "::/0"}]}"#)
            .unwrap_err();
        assert!(
            err.contains("\"icmp\" cannot match the IPv6 cidr \"::/0\""),
            "{err}"
        );
        let err = parse(r#"{"conntrack_max": 0}"#).unwrap_err();
        assert!(err.contains("\"conntrack_max\" is 0"), "{err}");
        let err = parse(r#"{"flow_log_interval_secs": 0}"#).unwrap_err();
        assert!(err.contains("flow_log_interval_secs"), "{err}");
        assert!(parse(r#"{"flow_log": ""}"#)
            .unwrap_err()
            .contains("empty path"));
    }

    #[test]
    fn mac_only_allows_everything_but_spoofing() {
        let config = FirewallConfig::mac_only();
        config.validate().unwrap();
        assert_eq!(config.default_ingress, Action::Allow);
        assert_eq!(config.allowed_ips.len(), 2);
    }
}
