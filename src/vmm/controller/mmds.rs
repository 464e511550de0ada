//! The controller's MMDS actions, with Firecracker's rules: `PUT /mmds/config` before boot
//! only (its interfaces must be configured ones); `PUT|PATCH|GET /mmds` in every state. The
//! store comes into being with the first MMDS action before boot (or `--metadata`, or the
//! config file's `mmds-config`); after boot, a VM whose store never came into being answers
//! them with "not initialized", as Firecracker does.

use serde_json::{Map, Value};

use super::Controller;
use crate::config::validate_mmds;
use crate::mmds::{MmdsConfig, MmdsStore, StoreError};
use crate::vmm::action::{ActionError, ActionResult, VmmData};

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
                    value => value.clone(),
                };
                return Ok(VmmData::MmdsValue(value));
            }
        }
        Ok(VmmData::Empty)
    }
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
