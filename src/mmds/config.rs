//! `PUT /mmds/config` and the config file's `mmds-config` section: Firecracker's fields and
//! checks (a link-local address, interfaces that exist), with Palisade's default version V2
//! (Firecracker's is V1; V1 stays accepted when asked for).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The address the guest reaches the service on unless configured (Firecracker's, EC2's).
pub const DEFAULT_IPV4_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// The MMDS protocol version: V1 answers any GET, V2 asks for a session token first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum MmdsVersion {
    /// No session token (Firecracker's default, deprecated there).
    V1,
    /// Session tokens (Palisade's default).
    #[default]
    V2,
}

/// The MMDS configuration, as PUT and as shown by `GET /vm/config`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    /// Protocol version; V2 when absent.
    #[serde(default)]
    pub version: MmdsVersion,
    /// The network interfaces (`iface_id`s) whose guest may reach the service.
    pub network_interfaces: Vec<String>,
    /// The service's address; [`DEFAULT_IPV4_ADDRESS`] when absent.
    #[serde(default)]
    pub ipv4_address: Option<Ipv4Addr>,
    /// Answer objects as EC2 IMDS does (text listings) whatever the `Accept` header.
    #[serde(default)]
    pub imds_compat: bool,
}

/// Why an MMDS configuration is refused (Firecracker's messages).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmdsConfigError {
    /// `network_interfaces` is empty.
    #[error("The list of network interface IDs that allow forwarding MMDS requests is empty.")]
    EmptyNetworkIfaceList,
    /// `ipv4_address` is outside 169.254.1.0 - 169.254.254.255.
    #[error("The MMDS IPv4 address is not link local.")]
    InvalidIpv4Addr,
    /// `network_interfaces` names an interface that is not configured.
    #[error("The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")]
    InvalidNetworkInterfaceId,
}

/// Whether `addr` is a usable link-local address (RFC 3927 reserves the first and last /24
/// of 169.254.0.0/16; Firecracker refuses them too).
pub fn is_link_local_valid(addr: Ipv4Addr) -> bool {
    matches!(addr.octets(), [169, 254, 1..=254, _])
}

impl MmdsConfig {
    /// The service's address, the default filled in.
    pub fn ipv4_addr(&self) -> Ipv4Addr {
        self.ipv4_address.unwrap_or(DEFAULT_IPV4_ADDRESS)
    }

    /// Checks the configuration in Firecracker's order (address, empty list, unknown
    /// interface) against `iface_exists`, and returns it with the address filled in.
    pub fn validated(
        mut self,
        iface_exists: impl Fn(&str) -> bool,
    ) -> Result<Self, MmdsConfigError> {
        let addr = self.ipv4_addr();
        if !is_link_local_valid(addr) {
            return Err(MmdsConfigError::InvalidIpv4Addr);
        }
        if self.network_interfaces.is_empty() {
            return Err(MmdsConfigError::EmptyNetworkIfaceList);
        }
        if !self.network_interfaces.iter().all(|id| iface_exists(id)) {
            return Err(MmdsConfigError::InvalidNetworkInterfaceId);
        }
        if self.version == MmdsVersion::V1 {
            log::warn!(
                "MMDS V1 configured: the guest reads metadata without a session token \
                 (V2, the default, requires one)"
            );
        }
        self.ipv4_address = Some(addr);
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn parse(value: serde_json::Value) -> Result<MmdsConfig, serde_json::Error> {
        serde_json::from_value(value)
    }

    fn eth0(id: &str) -> bool {
        id == "eth0"
    }

    #[test]
    fn version_defaults_to_v2_and_address_to_169_254_169_254() {
        let config = parse(json!({"network_interfaces": ["eth0"]})).unwrap();
        assert_eq!(config.version, MmdsVersion::V2);
        assert!(!config.imds_compat);
        let config = config.validated(eth0).unwrap();
        assert_eq!(config.ipv4_address, Some(DEFAULT_IPV4_ADDRESS));
    }

    #[test]
    fn v1_is_accepted_when_asked_for() {
        let config = parse(json!({"version": "V1", "network_interfaces": ["eth0"]})).unwrap();
        assert_eq!(config.version, MmdsVersion::V1);
    }

    #[test]
    fn bad_bodies_are_refused_by_the_parser() {
        for body in [
            json!({"version": "V3", "network_interfaces": ["eth0"]}),
            json!({"version": "V2"}),
            json!({"network_interfaces": ["eth0"], "ipv4_address": ""}),
            json!({"network_interfaces": ["eth0"], "ipv4_address": "169.254.169.254/32"}),
            json!({"network_interfaces": ["eth0"], "extra": 1}),
        ] {
            assert!(parse(body.clone()).is_err(), "{body}");
        }
    }

    #[test]
    fn only_usable_link_local_addresses_are_accepted() {
        for (addr, ok) in [
            ("169.254.169.254", true),
            ("169.254.1.0", true),
            ("169.254.254.255", true),
            ("169.254.0.1", false),
            ("169.254.255.1", false),
            ("10.0.0.1", false),
            ("127.0.0.1", false),
            ("0.0.0.0", false),
        ] {
            let config =
                parse(json!({"network_interfaces": ["eth0"], "ipv4_address": addr})).unwrap();
            let got = config.validated(eth0);
            if ok {
                assert_eq!(got.unwrap().ipv4_addr().to_string(), addr);
            } else {
                assert_eq!(got, Err(MmdsConfigError::InvalidIpv4Addr), "{addr}");
            }
        }
    }

    #[test]
    fn interfaces_must_be_named_and_configured() {
        let empty = parse(json!({"network_interfaces": []})).unwrap();
        assert_eq!(
            empty.validated(eth0),
            Err(MmdsConfigError::EmptyNetworkIfaceList)
        );
        let unknown = parse(json!({"network_interfaces": ["eth0", "eth1"]})).unwrap();
        assert_eq!(
            unknown.validated(eth0),
            Err(MmdsConfigError::InvalidNetworkInterfaceId)
        );
        // The address is checked first, as Firecracker does.
        let both = parse(json!({"network_interfaces": [], "ipv4_address": "1.2.3.4"})).unwrap();
        assert_eq!(both.validated(eth0), Err(MmdsConfigError::InvalidIpv4Addr));
    }
}
