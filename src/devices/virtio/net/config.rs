//! A `network-interfaces` entry (Firecracker's `NetworkInterfaceConfig`) plus Palisade's
//! `firewall` object, the body of `PATCH /network-interfaces/{iface_id}`, and the Landlock
//! rule for the flow-log file this configuration names.

use std::path::PathBuf;

use palisade_firewall::{parse_mac, FirewallConfig, MacAddr};
use serde::{Deserialize, Serialize};

use crate::rate_limiter::RateLimiterConfig;

/// The most network interfaces one VM may have.
pub const MAX_INTERFACES: usize = 8;

/// Errors of a network interface's configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetConfigError {
    /// `iface_id` is empty, too long or has other characters than `[A-Za-z0-9_]`.
    #[error("Invalid iface_id '{0}': 1 to 64 characters of [A-Za-z0-9_]")]
    Id(String),
    /// `host_dev_name` cannot name a tap.
    #[error("Invalid host_dev_name '{0}': 1 to 15 bytes, no '/' or NUL")]
    HostDevName(String),
    /// `guest_mac` is not `xx:xx:xx:xx:xx:xx`, or is a multicast address.
    #[error("Invalid guest_mac '{0}': six hexadecimal bytes separated by ':', unicast")]
    GuestMac(String),
    /// The firewall object does not validate.
    #[error("Invalid firewall of interface {0}: {1}")]
    Firewall(String, String),
}

/// A `network-interfaces` entry and the body of `PUT /network-interfaces/{iface_id}`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceConfig {
    /// Unique id.
    pub iface_id: String,
    /// The host tap device the interface uses.
    pub host_dev_name: String,
    /// The guest's MAC address (config space); turns anti-spoofing on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Limits on frames to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits on frames from the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
    /// Palisade's firewall; with `guest_mac` and no firewall, MAC anti-spoofing only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<FirewallConfig>,
}

/// `PATCH /network-interfaces/{iface_id}` (Firecracker's `NetworkInterfaceUpdateConfig`, plus
/// `firewall`): what is absent is kept.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    /// Which interface.
    pub iface_id: String,
    /// New RX limits.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// New TX limits.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
    /// A new rule set, swapped atomically.
    #[serde(default)]
    pub firewall: Option<FirewallConfig>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl NetworkInterfaceConfig {
    /// Checks the interface on its own (the tap is opened when the VM is built).
    pub fn validate(&self) -> Result<(), NetConfigError> {
        if !valid_id(&self.iface_id) {
            return Err(NetConfigError::Id(self.iface_id.clone()));
        }
        let name = self.host_dev_name.as_bytes();
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) || name.contains(&b'/')
        {
            return Err(NetConfigError::HostDevName(self.host_dev_name.clone()));
        }
        self.mac()?;
        if let Some(firewall) = &self.firewall {
            firewall
                .validate()
                .map_err(|e| NetConfigError::Firewall(self.iface_id.clone(), e.to_string()))?;
        }
        Ok(())
    }

    /// The parsed `guest_mac`.
    pub fn mac(&self) -> Result<Option<MacAddr>, NetConfigError> {
        let Some(text) = &self.guest_mac else {
            return Ok(None);
        };
        let bad = || NetConfigError::GuestMac(text.clone());
        let mac = parse_mac(text).map_err(|_| bad())?;
        if mac[0] & 1 != 0 {
            return Err(bad());
        }
        Ok(Some(mac))
    }

    /// The firewall in force: the configured one, MAC anti-spoofing only when there is a
    /// `guest_mac` but no `firewall`, none otherwise.
    pub fn effective_firewall(&self) -> Option<FirewallConfig> {
        match (&self.firewall, &self.guest_mac) {
            (Some(firewall), _) => Some(firewall.clone()),
            (None, Some(_)) => Some(FirewallConfig::mac_only()),
            (None, None) => None,
        }
    }

    /// Files the VMM writes after its Landlock layer is in force: the flow log.
    pub fn landlock_write_paths(&self) -> Vec<PathBuf> {
        self.firewall
            .as_ref()
            .and_then(|f| f.flow_log.clone())
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn firecracker_network_interface_parses_with_a_firewall() {
        let cfg: NetworkInterfaceConfig = serde_json::from_str(
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02",
                "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}},
                "firewall": {"allowed_ips": ["172.16.0.2/32"], "flow_log": "/flows.jsonl",
                             "ingress": [{"action": "allow", "proto": "tcp", "ports": "22"}]}}"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.mac().unwrap(), Some([6, 0, 0xac, 0x10, 0, 2]));
        assert_eq!(
            cfg.landlock_write_paths(),
            vec![PathBuf::from("/flows.jsonl")]
        );
        assert!(cfg.effective_firewall().is_some());
    }

    #[test]
    fn bad_ids_names_and_macs_are_refused() {
        let base = NetworkInterfaceConfig {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            firewall: None,
        };
        assert!(base.effective_firewall().is_none());
        let with = |f: &dyn Fn(&mut NetworkInterfaceConfig)| {
            let mut c = base.clone();
            f(&mut c);
            c.validate()
        };
        assert!(matches!(with(&|c| c.iface_id = "a/b".into()), Err(NetConfigError::Id(_))));
        assert!(matches!(
            with(&|c| c.host_dev_name = "a-name-longer-than-15".into()),
            Err(NetConfigError::HostDevName(_))
        ));
        assert!(matches!(
            with(&|c| c.guest_mac = Some("01:00:00:00:00:01".into())),
            Err(NetConfigError::GuestMac(_))
        ));
        assert!(matches!(
            with(&|c| c.guest_mac = Some("06:00:00:00:00".into())),
            Err(NetConfigError::GuestMac(_))
        ));
        assert!(serde_json::from_str::<NetworkInterfaceConfig>(
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "bogus": 1}"#
        )
        .is_err());
    }
}
