//! `PUT /mmds/config` and the config file's `mmds-config` section: Firecracker's fields and
//! checks (a link-local address, interfaces that exist), with Palisade's default version V2
//! (Firecracker's is V1; V1 stays accepted when asked for), and Palisade's extensions: the
//! answers' IP TTL (`hop_limit`, default 1) and the per-VM request rate limit
//! (`rate_limiter`, on by default with [`DEFAULT_RATE_LIMIT`]).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

/// The address the guest reaches the service on unless configured (Firecracker's, EC2's).
pub const DEFAULT_IPV4_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// The IP TTL of answers unless configured: a router (a container bridge or NAT inside the
/// guest) cannot relay them, as IMDSv2's hop limit does.
pub const DEFAULT_HOP_LIMIT: u8 = 1;

/// The per-VM request limit unless configured: a burst of 100 connections (each carries one
/// request), refilled at 50 a second. An honest guest reads a few dozen paths at boot
/// (cloud-init, an SDK's credential refresh every few minutes) and never comes near it; a
/// flood is held to 50 answered requests a second for the whole VM.
pub const DEFAULT_RATE_LIMIT: RateLimiterConfig = RateLimiterConfig {
    bandwidth: None,
    ops: Some(TokenBucketConfig {
        size: 100,
        one_time_burst: None,
        refill_time: 2000,
    }),
};

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
    /// IP TTL of answers, 1..=255 (Palisade's extension); [`DEFAULT_HOP_LIMIT`] when absent.
    #[serde(default)]
    pub hop_limit: Option<u64>,
    /// Per-VM limit on guest requests (Palisade's extension): an `ops` bucket counting
    /// connections (one request each); [`DEFAULT_RATE_LIMIT`] when absent, no limit when
    /// `{}` or the bucket's size or refill time is 0. `bandwidth` is refused.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
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
    /// `hop_limit` is outside 1..=255.
    #[error("The MMDS hop limit {0} is out of range: give a value between 1 and 255.")]
    InvalidHopLimit(u64),
    /// `rate_limiter` has a `bandwidth` bucket.
    #[error("The MMDS rate limiter counts requests: give an `ops` bucket; `bandwidth` is not supported.")]
    RateLimiterBandwidth,
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

    /// The IP TTL of answers, the default filled in (a validated config holds 1..=255).
    pub fn hop_limit(&self) -> u8 {
        self.hop_limit
            .and_then(|h| u8::try_from(h).ok())
            .filter(|&h| h > 0)
            .unwrap_or(DEFAULT_HOP_LIMIT)
    }

    /// The request limit, the default filled in.
    pub fn rate_limiter(&self) -> RateLimiterConfig {
        self.rate_limiter.unwrap_or(DEFAULT_RATE_LIMIT)
    }

    /// Checks the configuration in Firecracker's order (address, empty list, unknown
    /// interface), then Palisade's fields (hop limit, rate limiter), against `iface_exists`,
    /// and returns it with the address, hop limit and rate limiter filled in.
    pub fn validated(
        mut self,
        iface_exists: impl Fn(&str) -> bool,
    ) -> Result<Self, MmdsConfigError> {
        let addr = self.ipv4_addr();
        if !is_link_local_valid(addr) {
            return Err(MmdsConfigError::InvalidIpv4Addr);
        }
        // Each interface once (a list naming one thousands of times is not thousands of
        // responders), in the order given.
        let mut seen = std::collections::HashSet::new();
        self.network_interfaces.retain(|id| seen.insert(id.clone()));
        if self.network_interfaces.is_empty() {
            return Err(MmdsConfigError::EmptyNetworkIfaceList);
        }
        if !self.network_interfaces.iter().all(|id| iface_exists(id)) {
            return Err(MmdsConfigError::InvalidNetworkInterfaceId);
        }
        let hop_limit = self.hop_limit.unwrap_or(u64::from(DEFAULT_HOP_LIMIT));
        if !(1..=255).contains(&hop_limit) {
            return Err(MmdsConfigError::InvalidHopLimit(hop_limit));
        }
        let rate_limiter = self.rate_limiter();
        if rate_limiter.bandwidth.is_some() {
            return Err(MmdsConfigError::RateLimiterBandwidth);
        }
        if self.version == MmdsVersion::V1 {
            log::warn!(
                "MMDS V1 configured: the guest reads metadata without a session token \
                 (V2, the default, requires one)"
            );
        }
        self.ipv4_address = Some(addr);
        self.hop_limit = Some(hop_limit);
        self.rate_limiter = Some(rate_limiter);
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
    fn hop_limit_defaults_to_one_and_out_of_range_is_refused_with_a_clear_message() {
        let config = parse(json!({"network_interfaces": ["eth0"]})).unwrap();
        let config = config.validated(eth0).unwrap();
        assert_eq!((config.hop_limit, config.hop_limit()), (Some(1), 1));
        for ok in [1u64, 64, 255] {
            let config = parse(json!({"network_interfaces": ["eth0"], "hop_limit": ok})).unwrap();
            assert_eq!(u64::from(config.validated(eth0).unwrap().hop_limit()), ok);
        }
        for bad in [0u64, 256, u64::MAX] {
            let config = parse(json!({"network_interfaces": ["eth0"], "hop_limit": bad})).unwrap();
            let err = config.validated(eth0).unwrap_err();
            assert_eq!(err, MmdsConfigError::InvalidHopLimit(bad));
            assert!(err.to_string().contains("between 1 and 255"), "{err}");
        }
        for body in [
            json!({"network_interfaces": ["eth0"], "hop_limit": -1}),
            json!({"network_interfaces": ["eth0"], "hop_limit": "1"}),
            json!({"network_interfaces": ["eth0"], "hop_limit": 1.5}),
        ] {
            assert!(parse(body.clone()).is_err(), "{body}");
        }
    }

    #[test]
    fn rate_limit_is_on_by_default_configurable_and_counts_requests_only() {
        let config = parse(json!({"network_interfaces": ["eth0"]})).unwrap();
        let config = config.validated(eth0).unwrap();
        assert_eq!(config.rate_limiter, Some(DEFAULT_RATE_LIMIT));
        let ops = json!({"ops": {"size": 10, "refill_time": 1000, "one_time_burst": 5}});
        let config =
            parse(json!({"network_interfaces": ["eth0"], "rate_limiter": ops.clone()})).unwrap();
        let config = config.validated(eth0).unwrap();
        assert_eq!(serde_json::to_value(config.rate_limiter).unwrap(), ops);
        // `{}` is no limit, as for a network interface.
        let off = parse(json!({"network_interfaces": ["eth0"], "rate_limiter": {}})).unwrap();
        assert_eq!(
            off.validated(eth0).unwrap().rate_limiter,
            Some(RateLimiterConfig::default())
        );
        let bytes = json!({"bandwidth": {"size": 10, "refill_time": 1000}});
        let config = parse(json!({"network_interfaces": ["eth0"], "rate_limiter": bytes})).unwrap();
        assert_eq!(
            config.validated(eth0),
            Err(MmdsConfigError::RateLimiterBandwidth)
        );
        let unknown = json!({"network_interfaces": ["eth0"], "rate_limiter": {"opps": {}}});
        assert!(parse(unknown).is_err());
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
    fn an_interface_named_many_times_is_kept_once_in_order() {
        let mut names = vec!["eth0".to_string(); 10_000];
        names.insert(1, "eth1".into());
        let config = MmdsConfig {
            network_interfaces: names,
            ..parse(json!({"network_interfaces": ["eth0"]})).unwrap()
        };
        let config = config.validated(|id| id == "eth0" || id == "eth1").unwrap();
        assert_eq!(config.network_interfaces, ["eth0", "eth1"]);
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
