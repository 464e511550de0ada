//! A `network-interfaces` entry (Firecracker's `NetworkInterfaceConfig`) plus Palisade's
//! `firewall` object, the body of `PATCH /network-interfaces/{iface_id}`, and the Landlock
//! rule for the flow-log file this configuration names.

use palisade_firewall::{parse_mac, ConfigError as FirewallConfigError, FirewallConfig, MacAddr};
use serde::{Deserialize, Serialize};

use crate::devices::valid_resource_id;
use crate::rate_limiter::RateLimiterConfig;
use crate::sandbox::PathRule;

/// The smallest `mtu` (IPv4's minimum), as Firecracker checks it.
pub const MIN_MTU: u16 = 68;

/// The most network interfaces one VM may have.
pub const MAX_INTERFACES: usize = 8;

/// Errors of a network interface's configuration.
#[derive(Debug, thiserror::Error)]
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
    #[error("Invalid firewall of interface {iface}: {source}")]
    Firewall {
        /// The interface.
        iface: String,
        /// What the firewall refused.
        source: FirewallConfigError,
    },
    /// The flow-log file cannot be created.
    #[error("Cannot create the flow log {path}: {source}")]
    FlowLog {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `mtu` below the IPv4 minimum (Firecracker's range).
    #[error("Could not create the network device: MTU {0} is out of range [68, 65535]")]
    Mtu(u16),
    /// A ninth interface.
    #[error("At most {MAX_INTERFACES} network interfaces are supported")]
    TooMany,
    /// Two interfaces on one tap, or with one MAC.
    #[error("The {0} '{1}' is already used by interface {2}")]
    Duplicate(&'static str, String, String),
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
    /// Firecracker's `mtu` (68 to 65535): offered to the guest (VIRTIO_NET_F_MTU and the
    /// config space), and a plain frame from the guest longer than it (VLAN tags aside) is
    /// dropped and counted, whether or not the driver accepted the feature (see
    /// [`super::tx::over_mtu`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
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

impl NetworkInterfaceConfig {
    /// Checks the interface on its own (`open_tap` then opens its tap).
    pub fn validate(&self) -> Result<(), NetConfigError> {
        if !valid_resource_id(&self.iface_id) {
            return Err(NetConfigError::Id(self.iface_id.clone()));
        }
        if let Some(mtu) = self.mtu.filter(|m| *m < MIN_MTU) {
            return Err(NetConfigError::Mtu(mtu));
        }
        let name = self.host_dev_name.as_bytes();
        if name.is_empty()
            || name.len() >= libc::IFNAMSIZ
            || name.contains(&0)
            || name.contains(&b'/')
        {
            return Err(NetConfigError::HostDevName(self.host_dev_name.clone()));
        }
        let mac = self.mac()?;
        if let Some(firewall) = &self.firewall {
            firewall
                .validate_for_interface(mac)
                .map_err(|source| NetConfigError::Firewall {
                    iface: self.iface_id.clone(),
                    source,
                })?;
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

    /// Creates the flow-log file (mode 0600, append) if it is missing, so that the Landlock
    /// layer can name it before the firewall opens it.
    pub fn create_flow_log(&self) -> Result<(), NetConfigError> {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(path) = self.firewall.as_ref().and_then(|f| f.flow_log.as_ref()) else {
            return Ok(());
        };
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map(drop)
            .map_err(|source| NetConfigError::FlowLog {
                path: path.display().to_string(),
                source,
            })
    }

    /// The VMM's Landlock rules for this interface: its flow log, written (and reopened on
    /// PATCH) after the layer is in force. The tap is opened through /dev/net/tun, a device
    /// every VMM layer allows.
    pub fn landlock_rules(&self) -> Vec<PathRule> {
        self.firewall
            .as_ref()
            .and_then(|f| f.flow_log.as_ref())
            .map(PathRule::read_write)
            .into_iter()
            .collect()
    }
}

/// The network interfaces of a VM, in attachment order (eth0 first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceList(Vec<NetworkInterfaceConfig>);

impl InterfaceList {
    /// Adds an interface, or replaces the one with the same id (Firecracker's `PUT`).
    pub fn insert(&mut self, iface: NetworkInterfaceConfig) -> Result<(), NetConfigError> {
        iface.validate()?;
        let others = self.0.iter().filter(|i| i.iface_id != iface.iface_id);
        for other in others {
            if other.host_dev_name == iface.host_dev_name {
                let name = iface.host_dev_name.clone();
                return Err(NetConfigError::Duplicate(
                    "host_dev_name",
                    name,
                    other.iface_id.clone(),
                ));
            }
            if iface.guest_mac.is_some() && other.mac()? == iface.mac()? {
                let mac = iface.guest_mac.clone().unwrap_or_default();
                return Err(NetConfigError::Duplicate(
                    "guest_mac",
                    mac,
                    other.iface_id.clone(),
                ));
            }
        }
        match self.0.iter().position(|i| i.iface_id == iface.iface_id) {
            Some(i) => self.0[i] = iface,
            None if self.0.len() >= MAX_INTERFACES => return Err(NetConfigError::TooMany),
            None => self.0.push(iface),
        }
        Ok(())
    }

    /// The interfaces, in order.
    pub fn iter(&self) -> impl Iterator<Item = &NetworkInterfaceConfig> {
        self.0.iter()
    }

    /// The interface with this id, to record a run-time update.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut NetworkInterfaceConfig> {
        self.0.iter_mut().find(|i| i.iface_id == id)
    }

    /// Every interface, for `GET /vm/config`.
    pub fn as_slice(&self) -> &[NetworkInterfaceConfig] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;

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
        let rules = cfg.landlock_rules();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].path, PathBuf::from("/flows.jsonl"));
        assert!(rules[0].write);
        assert!(cfg.effective_firewall().is_some());
    }

    #[test]
    fn bad_ids_names_and_macs_are_refused() {
        let base = NetworkInterfaceConfig {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: None,
            mtu: None,
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
        assert!(matches!(
            with(&|c| c.iface_id = "a/b".into()),
            Err(NetConfigError::Id(_))
        ));
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
        let mut list = InterfaceList::default();
        list.insert(base.clone()).unwrap();
        let mut second = base.clone();
        second.iface_id = "eth1".into();
        assert!(matches!(
            list.insert(second.clone()),
            Err(NetConfigError::Duplicate(..))
        ));
        for i in 1..MAX_INTERFACES {
            second.host_dev_name = format!("tap{i}");
            second.iface_id = format!("eth{i}");
            list.insert(second.clone()).unwrap();
        }
        second.iface_id = "eth9".into();
        second.host_dev_name = "tap9".into();
        assert!(matches!(list.insert(second), Err(NetConfigError::TooMany)));
        assert!(serde_json::from_str::<NetworkInterfaceConfig>(
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "bogus": 1}"#
        )
        .is_err());
    }
}
