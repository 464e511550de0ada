//! The configuration of the vsock device (`vsock`, `PUT /vsock`: Firecracker's
//! `VsockDeviceConfig`) and Palisade's `policy` object on it (`PATCH /vsock` after boot):
//! which ports each side may connect to, how many connections may be open at once, and how
//! fast they may move bytes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::devices::valid_resource_id;
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};

/// The host's CID (VMADDR_CID_HOST), the only peer the guest can reach.
pub const HOST_CID: u64 = 2;
/// The most connections open at once when the policy does not say.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 64;
/// The highest `max_connections` a policy may ask for (each costs bounded host memory).
pub const MAX_CONNECTIONS_LIMIT: u32 = 1024;
/// The longest `uds_path` (`sun_path` holds 108 bytes with its NUL, and the guest-initiated
/// socket names add `_<port>`, up to 11 bytes).
pub const MAX_UDS_PATH: usize = 96;

/// Why a vsock configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum VsockConfigError {
    /// `vsock_id` breaks Firecracker's rule for resource ids.
    #[error("Invalid vsock_id '{0}': 1 to 64 characters of [A-Za-z0-9_]")]
    Id(String),
    /// CIDs 0-2 are reserved (hypervisor, local, host), and u32::MAX is VMADDR_CID_ANY.
    #[error("Invalid guest_cid {0}: must be from 3 to 4294967294")]
    Cid(u32),
    /// `uds_path` is empty, not absolute-or-relative file name, or too long.
    #[error(
        "Invalid uds_path '{0}': a socket path of 1 to {MAX_UDS_PATH} bytes, not ending in '/'"
    )]
    UdsPath(String),
    /// A port or port range does not parse.
    #[error("Invalid vsock port range '{0}': 'N' or 'N-M' with 0 <= N <= M <= 4294967295")]
    Ports(String),
    /// `max_connections` out of range.
    #[error("Invalid max_connections {0}: must be from 1 to {MAX_CONNECTIONS_LIMIT}")]
    MaxConnections(u32),
    /// A rate limiter does not build.
    #[error("Invalid vsock {which}: {source}")]
    RateLimiter {
        /// `rate_limiter` or `connection_rate_limiter`.
        which: &'static str,
        /// Why.
        source: RateLimiterError,
    },
    /// `PATCH /vsock` before a vsock device was configured.
    #[error("No vsock device is configured")]
    NotConfigured,
}

/// An inclusive range of vsock ports, written `"N"` or `"N-M"` in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    /// First port.
    pub first: u32,
    /// Last port (inclusive).
    pub last: u32,
}

impl PortRange {
    /// Whether `port` is in the range.
    pub fn contains(&self, port: u32) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl TryFrom<String> for PortRange {
    type Error = VsockConfigError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let bad = || VsockConfigError::Ports(text.clone());
        let number = |s: &str| {
            // Digits only: no sign, no spaces, no empty side.
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse::<u32>().ok()
        };
        let (first, last) = match text.split_once('-') {
            Some((a, b)) => (number(a).ok_or_else(bad)?, number(b).ok_or_else(bad)?),
            None => {
                let n = number(&text).ok_or_else(bad)?;
                (n, n)
            }
        };
        if first > last {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

impl From<PortRange> for String {
    fn from(range: PortRange) -> Self {
        if range.first == range.last {
            range.first.to_string()
        } else {
            format!("{}-{}", range.first, range.last)
        }
    }
}

/// Which ports a side may connect to: absent means every port (Firecracker's behaviour),
/// an empty list means none.
pub type PortList = Option<Vec<PortRange>>;

/// Whether `port` is allowed by `list`.
pub fn port_allowed(list: &PortList, port: u32) -> bool {
    list.as_ref()
        .is_none_or(|ranges| ranges.iter().any(|r| r.contains(port)))
}

/// Palisade's `policy` object on the vsock device.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VsockPolicy {
    /// Guest ports a host client may reach with `CONNECT <port>`; absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_initiated: PortList,
    /// Host ports (`<uds_path>_<port>` listeners) the guest may connect to; absent = all,
    /// `[]` = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_initiated: PortList,
    /// The most connections open at once, both directions together
    /// ([`DEFAULT_MAX_CONNECTIONS`] when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Limits every connection on its own (bytes both ways; ops = packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate_limiter: Option<RateLimiterConfig>,
    /// Limits the whole device (bytes both ways; ops = packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl VsockPolicy {
    /// The connection cap in force.
    pub fn max_connections(&self) -> u32 {
        self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS)
    }

    /// Whether a host client may connect to guest port `port`.
    pub fn host_may_connect(&self, port: u32) -> bool {
        port_allowed(&self.host_initiated, port)
    }

    /// Whether the guest may connect to host port `port`.
    pub fn guest_may_connect(&self, port: u32) -> bool {
        port_allowed(&self.guest_initiated, port)
    }

    /// Checks the cap and that both rate limiters build.
    pub fn validate(&self) -> Result<(), VsockConfigError> {
        if let Some(n) = self.max_connections {
            if n == 0 || n > MAX_CONNECTIONS_LIMIT {
                return Err(VsockConfigError::MaxConnections(n));
            }
        }
        for (which, config) in [
            ("connection_rate_limiter", &self.connection_rate_limiter),
            ("rate_limiter", &self.rate_limiter),
        ] {
            if let Some(config) = config {
                RateLimiter::new(config)
                    .map_err(|source| VsockConfigError::RateLimiter { which, source })?;
            }
        }
        Ok(())
    }
}

/// The `vsock` section and the body of `PUT /vsock` (Firecracker's `VsockDeviceConfig`,
/// plus Palisade's `policy`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VsockDeviceConfig {
    /// Deprecated in Firecracker; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id.
    pub guest_cid: u32,
    /// The host Unix socket the VMM listens on for host-initiated connections; guest-initiated
    /// connections to port P go to `<uds_path>_P`.
    pub uds_path: String,
    /// Palisade's policy; absent keeps Firecracker's behaviour (with the connection cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<VsockPolicy>,
}

impl VsockDeviceConfig {
    /// Checks what can be checked without touching the file system.
    pub fn validate(&self) -> Result<(), VsockConfigError> {
        if let Some(id) = &self.vsock_id {
            if !valid_resource_id(id) {
                return Err(VsockConfigError::Id(id.clone()));
            }
        }
        if self.guest_cid < 3 || self.guest_cid == u32::MAX {
            return Err(VsockConfigError::Cid(self.guest_cid));
        }
        let path = &self.uds_path;
        if path.is_empty()
            || path.len() > MAX_UDS_PATH
            || path.ends_with('/')
            || path.contains('\0')
        {
            return Err(VsockConfigError::UdsPath(path.clone()));
        }
        self.policy().validate()
    }

    /// The policy in force (the default one when none is given).
    pub fn policy(&self) -> VsockPolicy {
        self.policy.clone().unwrap_or_default()
    }

    /// The host listener's path.
    pub fn uds_path(&self) -> &Path {
        Path::new(&self.uds_path)
    }

    /// Where a guest-initiated connection to host port `port` goes: `<uds_path>_<port>`.
    pub fn guest_initiated_path(&self, port: u32) -> PathBuf {
        PathBuf::from(format!("{}_{port}", self.uds_path))
    }
}

/// The body of `PATCH /vsock` (a Palisade extension): replaces the policy. Connections
/// already open keep going under the new limits; new ones are judged by the new policy.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VsockUpdate {
    /// The new policy (absent: back to the default policy).
    #[serde(default)]
    pub policy: Option<VsockPolicy>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<VsockDeviceConfig, String> {
        let config: VsockDeviceConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn a_firecracker_body_parses_with_the_default_policy() {
        let c = parse(r#"{"vsock_id":"vsock0","guest_cid":3,"uds_path":"/v.sock"}"#).unwrap();
        assert_eq!(c.guest_cid, 3);
        assert_eq!(c.guest_initiated_path(52), PathBuf::from("/v.sock_52"));
        let p = c.policy();
        assert_eq!(p.max_connections(), DEFAULT_MAX_CONNECTIONS);
        assert!(p.host_may_connect(1) && p.guest_may_connect(u32::MAX));
    }

    #[test]
    fn reserved_cids_unknown_fields_and_bad_paths_are_refused() {
        for cid in [0u64, 1, 2, u32::MAX as u64] {
            let body = format!(r#"{{"guest_cid":{cid},"uds_path":"/v.sock"}}"#);
            assert!(parse(&body).is_err(), "cid {cid}");
        }
        assert!(parse(r#"{"guest_cid":3,"uds_path":"/v.sock","x":1}"#).is_err());
        assert!(parse(r#"{"guest_cid":3,"uds_path":""}"#).is_err());
        assert!(parse(r#"{"guest_cid":3,"uds_path":"/dir/"}"#).is_err());
        let long = format!(
            r#"{{"guest_cid":3,"uds_path":"/{}"}}"#,
            "a".repeat(MAX_UDS_PATH)
        );
        assert!(parse(&long).is_err());
        assert!(parse(r#"{"vsock_id":"a b","guest_cid":3,"uds_path":"/v"}"#).is_err());
    }

    #[test]
    fn a_policy_scopes_ports_and_an_empty_list_denies_all() {
        let c = parse(
            r#"{"guest_cid":3,"uds_path":"/v","policy":{"host_initiated":["52","1000-1002"],
                "guest_initiated":[],"max_connections":4}}"#,
        )
        .unwrap();
        let p = c.policy();
        assert!(p.host_may_connect(52) && p.host_may_connect(1002));
        assert!(!p.host_may_connect(53) && !p.host_may_connect(1003));
        assert!(!p.guest_may_connect(52));
        assert_eq!(p.max_connections(), 4);
        let round = serde_json::to_value(&c).unwrap();
        assert_eq!(round["policy"]["host_initiated"][1], "1000-1002");
    }

    #[test]
    fn bad_port_ranges_caps_and_limiters_are_refused() {
        for ports in [
            r#""-1""#,
            r#""5-3""#,
            r#""1-""#,
            r#""a""#,
            r#""4294967296""#,
            "7",
        ] {
            let body = format!(
                r#"{{"guest_cid":3,"uds_path":"/v","policy":{{"host_initiated":[{ports}]}}}}"#
            );
            assert!(parse(&body).is_err(), "{ports}");
        }
        for n in [0, MAX_CONNECTIONS_LIMIT + 1] {
            let body =
                format!(r#"{{"guest_cid":3,"uds_path":"/v","policy":{{"max_connections":{n}}}}}"#);
            assert!(parse(&body).is_err(), "{n}");
        }
    }
}
