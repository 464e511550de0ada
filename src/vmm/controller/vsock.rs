//! The controller's vsock actions: `PUT /vsock` before boot (the device is created there and
//! its listener bound, as Firecracker does, so a bad `uds_path` is refused at once and the
//! socket exists before the Landlock layer applies), and `PATCH /vsock` (Palisade's
//! extension) which replaces the configured policy before boot and the live one after it.

use super::Controller;
use crate::config::VsockDeviceConfig;
use crate::devices::virtio::vsock::config::{VsockConfigError, VsockUpdate};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::metrics::VsockDeviceMetrics;
use crate::vmm::action::{ActionResult, VmmData};
use crate::vmm::device_manager::registered_metrics;

/// The vsock device for `config`, its counters registered under `vsock`.
pub(super) fn create_vsock(config: &VsockDeviceConfig) -> Result<Vsock, VsockError> {
    config.validate()?;
    let metrics = registered_metrics::<VsockDeviceMetrics>(VsockDeviceMetrics::KEY.to_string());
    Vsock::new(config, metrics)
}

impl Controller {
    /// `PUT /vsock` before boot: checked, then created (its listener bound); only then
    /// recorded. A second PUT replaces the first device.
    pub(super) fn put_vsock(&mut self, config: VsockDeviceConfig) -> ActionResult {
        if config.vsock_id.is_some() {
            log::info!("vsock: vsock_id is deprecated and ignored");
        }
        // The old listener goes first: the new one may take over the same path.
        self.vsock = None;
        let device = create_vsock(&config)?;
        self.vsock = Some(device);
        self.resources.vsock = Some(config);
        Ok(VmmData::Empty)
    }

    /// Creates the configured device if no PUT did (a config file's `vsock` section), before
    /// the VMM's Landlock layer applies.
    pub(super) fn create_missing_vsock(&mut self) -> Result<(), VsockError> {
        if let (None, Some(config)) = (&self.vsock, &self.resources.vsock) {
            self.vsock = Some(create_vsock(config)?);
        }
        Ok(())
    }

    /// `PATCH /vsock`: the new policy, checked; applied to the device (created or running)
    /// and recorded for `GET /vm/config`. Nothing changes on error.
    pub(super) fn patch_vsock(&mut self, update: VsockUpdate) -> ActionResult {
        let Some(config) = self.resources.vsock.as_mut() else {
            return Err(VsockError::from(VsockConfigError::NotConfigured).into());
        };
        let policy = update.policy.clone().unwrap_or_default();
        if self.running.is_some() {
            let mut device = self
                .devices
                .vsock()
                .ok_or(VsockError::Config(VsockConfigError::NotConfigured))?;
            device.update_policy(policy)?;
        } else if let Some(device) = self.vsock.as_mut() {
            device.update_policy(policy)?;
        } else {
            policy.validate().map_err(VsockError::from)?;
        }
        config.policy = update.policy;
        Ok(VmmData::Empty)
    }
}
