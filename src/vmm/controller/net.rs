//! The controller's network-interface actions: PUT before boot, PATCH (limits and firewall,
//! live) after it, and the firewall's status.

use super::{json, Controller};
use crate::devices::virtio::net::config::{NetworkInterfaceConfig, NetworkInterfaceUpdate};
use crate::vmm::action::{ActionError, ActionResult, VmmData};

impl Controller {
    /// `PUT /network-interfaces/{id}` before boot.
    pub(super) fn put_network_interface(&mut self, iface: NetworkInterfaceConfig) -> ActionResult {
        self.resources
            .network_interfaces
            .insert(iface)
            .map(|_| VmmData::Empty)
            .map_err(|e| ActionError::InvalidConfig(e.to_string()))
    }

    /// `PATCH /network-interfaces/{id}` on a running VM: new limits and/or a new firewall,
    /// applied at once; the recorded configuration follows.
    pub(super) fn patch_network_interface(
        &mut self,
        update: &NetworkInterfaceUpdate,
    ) -> ActionResult {
        let id = &update.iface_id;
        let net = self.devices.net(id).ok_or_else(|| {
            ActionError::InvalidConfig(format!("No network interface with id '{id}' is attached"))
        })?;
        let mut net = net.lock().unwrap_or_else(|e| e.into_inner());
        net.update(update).map_err(|e| {
            ActionError::InvalidConfig(format!(
                "Unable to patch the network interface: {}",
                crate::error_chain(&e)
            ))
        })?;
        if let Some(iface) = self.resources.network_interfaces.get_mut(id) {
            let (rx, tx) = net.rate_limiter_configs();
            iface.rx_rate_limiter = (rx != Default::default()).then_some(rx);
            iface.tx_rate_limiter = (tx != Default::default()).then_some(tx);
            if update.firewall.is_some() {
                iface.firewall = net.firewall_config().cloned();
            }
        }
        Ok(VmmData::Empty)
    }

    /// `GET /network-interfaces/{id}/firewall`: the live status after boot, the configured
    /// firewall before it.
    pub(super) fn get_firewall(&self, id: &str) -> ActionResult {
        let missing = || ActionError::InvalidConfig(format!("No network interface with id '{id}'"));
        if self.running.is_some() {
            let net = self.devices.net(id).ok_or_else(missing)?;
            let net = net.lock().unwrap_or_else(|e| e.into_inner());
            let status = net.firewall_status().ok_or_else(|| {
                ActionError::InvalidConfig(format!("Network interface '{id}' has no firewall"))
            })?;
            return Ok(VmmData::Json(status));
        }
        let iface = self
            .resources
            .network_interfaces
            .iter()
            .find(|i| i.iface_id == id)
            .ok_or_else(missing)?;
        Ok(json(&serde_json::json!({
            "iface_id": id,
            "rules": iface.effective_firewall(),
        })))
    }
}
