//! A network interface in a VM snapshot: its configuration as in force (PATCHes included),
//! its rate limiters' remaining tokens and its firewall's live state (connection table, counters,
//! rule hits; see `palisade_firewall::FirewallState`). The transport and queues are saved by
//! the virtio-mmio transport like every device's.
//!
//! A restore treats the state as hostile: the configuration is checked as its PUT would be,
//! the firewall state by the firewall crate, the limiters' tokens against the configured
//! buckets; only then is the tap opened by name (`network_overrides` may have renamed it).
//! The frame read from the tap but not yet delivered at the save is not kept (a lost frame,
//! as on any network).

use std::time::Instant;

use palisade_firewall::{Firewall, FirewallState, FirewallStateError};
use serde::{Deserialize, Serialize};

use super::config::{NetConfigError, NetworkInterfaceConfig};
use super::tap::Tap;
use super::{open_tap, Net, NetError};
use crate::rate_limiter::{RateLimiter, RateLimiterState, RateLimiterStateError};

/// One interface's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The configuration in force, in its API (JSON) form: its optional fields need a
    /// self-describing format, which the state file's is not.
    pub config: String,
    /// The receive limiter's remaining tokens.
    pub rx_limiter: RateLimiterState,
    /// The transmit limiter's remaining tokens.
    pub tx_limiter: RateLimiterState,
    /// The firewall's live state (None for an interface without a firewall).
    pub firewall: Option<FirewallState>,
}

/// Why an interface's state is refused.
#[derive(Debug, thiserror::Error)]
pub enum NetStateError {
    /// The saved configuration does not parse.
    #[error("The saved configuration of a network interface does not parse")]
    Json(#[source] serde_json::Error),
    /// The saved configuration is refused as its PUT would be.
    #[error("The saved configuration of a network interface is refused")]
    Config(#[source] NetConfigError),
    /// A firewall state for an interface configured without a firewall.
    #[error("Interface {0}: the state has a firewall but the interface has none")]
    UnexpectedFirewall(String),
    /// No firewall state for an interface configured with one.
    #[error("Interface {0}: the interface has a firewall but the state has none")]
    MissingFirewall(String),
    /// The firewall state is refused.
    #[error("Interface {0}: its firewall state is refused")]
    Firewall(String, #[source] FirewallStateError),
    /// A limiter cannot be created.
    #[error("Interface {0}: cannot create its rate limiter")]
    LimiterTimer(String, #[source] crate::rate_limiter::RateLimiterError),
    /// The saved tokens do not fit the configured limiters.
    #[error("Interface {0}: its rate limiter state is refused")]
    Limiter(String, #[source] RateLimiterStateError),
    /// The tap cannot be opened.
    #[error("Interface {0}: cannot open its tap")]
    Tap(String, #[source] Box<NetError>),
}

/// An interface ready to be rebuilt: configuration, open tap, restored limiters and firewall.
pub struct RestoredNet {
    /// The configuration (with its `network_overrides` tap name).
    pub config: NetworkInterfaceConfig,
    pub(super) tap: Tap,
    pub(super) rx_limiter: RateLimiter,
    pub(super) tx_limiter: RateLimiter,
    pub(super) firewall: Option<Firewall>,
}

fn limiter(
    id: &str,
    config: Option<&crate::rate_limiter::RateLimiterConfig>,
    saved: &RateLimiterState,
) -> Result<RateLimiter, NetStateError> {
    let mut limiter = RateLimiter::new(&config.copied().unwrap_or_default())
        .map_err(|e| NetStateError::LimiterTimer(id.to_string(), e))?;
    limiter
        .restore_state(saved)
        .map_err(|e| NetStateError::Limiter(id.to_string(), e))?;
    Ok(limiter)
}

impl NetState {
    /// The saved configuration, checked as `PUT /network-interfaces` checks it.
    pub fn config(&self) -> Result<NetworkInterfaceConfig, NetStateError> {
        let config: NetworkInterfaceConfig =
            serde_json::from_str(&self.config).map_err(NetStateError::Json)?;
        config.validate().map_err(NetStateError::Config)?;
        Ok(config)
    }

    /// Checks this state against `config` (from [`NetState::config`], its tap possibly
    /// renamed), restores the firewall and limiters at `now`, then opens the tap. On error
    /// nothing is kept.
    pub fn restore(
        &self,
        config: NetworkInterfaceConfig,
        now: Instant,
    ) -> Result<RestoredNet, NetStateError> {
        config.validate().map_err(NetStateError::Config)?;
        let id = config.iface_id.clone();
        let mac = config.mac().map_err(NetStateError::Config)?;
        let firewall = match (config.effective_firewall(), &self.firewall) {
            (Some(fw), Some(state)) => Some(
                Firewall::restore(&id, &fw, mac, state, now)
                    .map_err(|e| NetStateError::Firewall(id.clone(), e))?,
            ),
            (None, None) => None,
            (None, Some(_)) => return Err(NetStateError::UnexpectedFirewall(id)),
            (Some(_), None) => return Err(NetStateError::MissingFirewall(id)),
        };
        let rx_limiter = limiter(&id, config.rx_rate_limiter.as_ref(), &self.rx_limiter)?;
        let tx_limiter = limiter(&id, config.tx_rate_limiter.as_ref(), &self.tx_limiter)?;
        let tap = open_tap(&config).map_err(|e| NetStateError::Tap(id, Box::new(e)))?;
        Ok(RestoredNet {
            config,
            tap,
            rx_limiter,
            tx_limiter,
            firewall,
        })
    }
}

impl Net {
    /// This interface's state, with `config` (the configuration in force) beside it.
    pub fn snapshot_state(
        &mut self,
        config: &NetworkInterfaceConfig,
    ) -> Result<NetState, serde_json::Error> {
        Ok(NetState {
            config: serde_json::to_string(config)?,
            rx_limiter: self.rx_limiter.save_state(),
            tx_limiter: self.tx_limiter.save_state(),
            firewall: self.firewall.as_ref().map(|fw| fw.save(Instant::now())),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn state(config: serde_json::Value, firewall: Option<FirewallState>) -> NetState {
        NetState {
            config: config.to_string(),
            rx_limiter: RateLimiterState::default(),
            tx_limiter: RateLimiterState::default(),
            firewall,
        }
    }

    fn firewall_state(iface: &str) -> FirewallState {
        let config = palisade_firewall::FirewallConfig::mac_only();
        let mac = Some([6, 0, 0, 0, 0, 2]);
        Firewall::new(iface, &config, mac, Instant::now())
            .unwrap()
            .save(Instant::now())
    }

    /// Errors that come before the tap is opened (the tap name does not exist).
    fn restore_err(s: &NetState) -> NetStateError {
        let config = s.config().unwrap();
        match s.restore(config, Instant::now()) {
            Err(e) => e,
            Ok(_) => panic!("restored"),
        }
    }

    #[test]
    fn a_state_whose_firewall_or_limiters_do_not_fit_the_interface_is_refused() {
        let iface = json!({"iface_id": "eth0", "host_dev_name": "pal-no-such",
                           "guest_mac": "06:00:00:00:00:02"});
        // A firewall state for another interface than the configuration names.
        let e = restore_err(&state(iface.clone(), Some(firewall_state("eth1"))));
        assert!(
            matches!(
                e,
                NetStateError::Firewall(_, FirewallStateError::Interface { .. })
            ),
            "{e}"
        );
        // The interface has anti-spoofing (guest_mac), the state no firewall.
        let e = restore_err(&state(iface.clone(), None));
        assert!(matches!(e, NetStateError::MissingFirewall(_)), "{e}");
        // A firewall state for an interface that has none.
        let bare = json!({"iface_id": "eth0", "host_dev_name": "pal-no-such"});
        let e = restore_err(&state(bare, Some(firewall_state("eth0"))));
        assert!(matches!(e, NetStateError::UnexpectedFirewall(_)), "{e}");
        // Tokens for a limiter the interface does not have.
        let mut s = state(iface, Some(firewall_state("eth0")));
        s.rx_limiter.ops = Some(crate::rate_limiter::BucketState {
            budget: 1,
            one_time_burst: 0,
        });
        let e = restore_err(&s);
        assert!(matches!(e, NetStateError::Limiter(..)), "{e}");
    }

    #[test]
    fn a_saved_configuration_is_checked_as_its_put() {
        let s = state(json!({"iface_id": "eth/0", "host_dev_name": "tap0"}), None);
        assert!(matches!(s.config(), Err(NetStateError::Config(_))));
        let s = state(json!({"iface_id": "eth0", "bogus": 1}), None);
        assert!(matches!(s.config(), Err(NetStateError::Json(_))));
    }
}
