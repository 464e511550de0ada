//! The controller's MMDS actions, with Firecracker's rules: `PUT /mmds/config` before boot
//! only (its interfaces must be configured ones); `PUT|PATCH|GET /mmds` in every state. The
//! store comes into being with the first MMDS action before boot (or `--metadata`, or the
//! config file's `mmds-config`); after boot, a VM whose store never came into being answers
//! them with "not initialized", as Firecracker does.

use std::time::Instant;

use serde_json::{Map, Value};

use super::Controller;
use crate::config::validate_mmds;
use crate::devices::virtio::net::mmds::limits::AUDIT_LINE_BUDGET;
use crate::devices::virtio::net::mmds::token::TokenError;
use crate::devices::virtio::net::mmds::{
    MmdsLimits, MmdsNetConfig, MmdsNetError, MmdsStack, TokenKey,
};
use crate::devices::virtio::rng::host_random;
use crate::mmds::{MmdsConfig, MmdsStore, StoreError};
use crate::vmm::action::{ActionError, ActionResult, VmmData};
use crate::vmm::device_manager::VirtioDevices;

/// Why the MMDS responders could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum MmdsStartError {
    /// The VM's token key could not be drawn.
    #[error("MMDS: {0}")]
    Key(#[source] TokenError),
    /// A responder's random seed could not be drawn.
    #[error("MMDS: cannot draw a random seed: {0}")]
    Seed(#[source] std::io::Error),
    /// A responder refused its configuration.
    #[error("MMDS on interface {0}: {1}")]
    Stack(String, #[source] MmdsNetError),
}

impl Controller {
    /// The store, created empty before boot if no action created it yet.
    fn mmds_store(&mut self) -> Result<&mut MmdsStore, ActionError> {
        if self.mmds.is_none() && self.running.is_none() {
            self.mmds = Some(MmdsStore::new(self.mmds_size_limit));
        }
        self.mmds
            .as_mut()
            .ok_or(ActionError::Mmds(StoreError::NotInitialized))
    }

    /// The size limit of the store (`--mmds-size-limit`), before any MMDS action.
    pub fn set_mmds_size_limit(&mut self, limit: usize) {
        self.mmds_size_limit = limit;
    }

    /// Fills the store from `--metadata` (a PUT before boot).
    pub fn put_metadata(&mut self, data: Value) -> Result<(), ActionError> {
        self.mmds_store()?.put(data).map_err(ActionError::from)
    }

    /// The store, for the guest-facing service.
    pub fn mmds(&self) -> Option<&MmdsStore> {
        self.mmds.as_ref()
    }

    /// Gives every interface named in `config` its responder, reading `store`'s own value
    /// (so PUT and PATCH after boot are what the guest reads next). One token key and one
    /// request limit per VM, drawn here: a VM built at start and one restored from a snapshot
    /// (which never holds the key) each get a new key, so tokens of the parent VM are refused
    /// by its clones. Tokens are bound to the interface. Nothing to do without `mmds-config`.
    pub(super) fn attach_mmds(
        &self,
        config: Option<&MmdsConfig>,
        store: Option<&MmdsStore>,
        devices: &VirtioDevices,
    ) -> Result<(), MmdsStartError> {
        let (Some(config), Some(store)) = (config, store) else {
            return Ok(());
        };
        let key = TokenKey::random().map_err(MmdsStartError::Key)?;
        let limits = MmdsLimits::new(&config.rate_limiter(), &AUDIT_LINE_BUDGET);
        let now = Instant::now();
        for iface in &config.network_interfaces {
            // Checked against the interfaces when configured: every one exists.
            let Some(mut net) = devices.net(iface) else {
                continue;
            };
            let mut seed = [0u8; 8];
            host_random(&mut seed).map_err(MmdsStartError::Seed)?;
            let stack = MmdsStack::new(
                mmds_net_config(config, iface, &limits),
                key.clone(),
                store.shared(),
                u64::from_le_bytes(seed),
                now,
            )
            .map_err(|e| MmdsStartError::Stack(iface.clone(), e))?;
            net.set_mmds(stack);
        }
        Ok(())
    }

    /// `PUT /mmds/config` before boot: checked against the configured interfaces, recorded.
    pub(super) fn put_mmds_config(&mut self, config: MmdsConfig) -> ActionResult {
        let config = validate_mmds(config, &self.resources.network_interfaces)
            .map_err(ActionError::MmdsConfig)?;
        self.mmds_store()?;
        self.resources.mmds_config = Some(config);
        Ok(VmmData::Empty)
    }

    /// `PUT|PATCH|GET /mmds`.
    pub(super) fn mmds_data(&mut self, action: MmdsData) -> ActionResult {
        let store = self.mmds_store()?;
        match action {
            MmdsData::Put(data) => store.put(data)?,
            MmdsData::Patch(patch) => store.patch(&patch)?,
            MmdsData::Get => {
                // Firecracker answers an empty (null) store with `{}`.
                let value = match store.value() {
                    Value::Null => Value::Object(Map::new()),
                    value => value,
                };
                return Ok(VmmData::MmdsValue(value));
            }
        }
        Ok(VmmData::Empty)
    }
}

/// The responder configuration of interface `iface` from the VM's `config`, sharing the VM's
/// `limits`.
pub(super) fn mmds_net_config(
    config: &MmdsConfig,
    iface: &str,
    limits: &MmdsLimits,
) -> MmdsNetConfig {
    let mut net_config = MmdsNetConfig::new(iface);
    net_config.ipv4_address = config.ipv4_addr();
    net_config.imds_compat = config.imds_compat;
    net_config.hop_limit = config.hop_limit();
    net_config.limits = limits.clone();
    net_config.version = config.version;
    net_config
}

/// What a data action does to the store.
pub(super) enum MmdsData {
    /// `PUT /mmds`.
    Put(Value),
    /// `PATCH /mmds`.
    Patch(Value),
    /// `GET /mmds`.
    Get,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::mmds::MmdsVersion;

    #[test]
    fn the_responders_get_the_configured_hop_limit_and_one_shared_request_limit() {
        let config: MmdsConfig = serde_json::from_value(json!({
            "network_interfaces": ["eth0", "eth1"], "hop_limit": 64, "version": "V1",
            "rate_limiter": {"ops": {"size": 1, "refill_time": 3_600_000}}
        }))
        .unwrap();
        let config = config.validated(|_| true).unwrap();
        let limits = MmdsLimits::new(&config.rate_limiter(), &AUDIT_LINE_BUDGET);
        let eth0 = mmds_net_config(&config, "eth0", &limits);
        let eth1 = mmds_net_config(&config, "eth1", &limits);
        assert_eq!((eth0.hop_limit, eth0.version), (64, MmdsVersion::V1));
        assert_eq!(eth1.iface_id, "eth1");
        // One token for the VM: eth0 takes it, eth1 finds none.
        assert!(eth0.limits.admit_request());
        assert!(!eth1.limits.admit_request());
        let default: MmdsConfig =
            serde_json::from_value(json!({"network_interfaces": ["eth0"]})).unwrap();
        let default = default.validated(|_| true).unwrap();
        assert_eq!(mmds_net_config(&default, "eth0", &limits).hop_limit, 1);
    }
}
