//! The controller's network-interface actions: PUT before boot (the tap is opened there, as
//! Firecracker does, and the VM is built on it), PATCH (limits and firewall, live) after it,
//! and the firewall's status.

use super::Controller;
use crate::devices::virtio::net::config::{NetworkInterfaceConfig, NetworkInterfaceUpdate};
use crate::vmm::action::{ActionError, ActionResult, ConfiguredFirewall, VmmData};

impl Controller {
    /// `PUT /network-interfaces/{id}` before boot: the interface is checked against the
    /// others, then its tap is opened; only then is it recorded.
    pub(super) fn put_network_interface(&mut self, iface: NetworkInterfaceConfig) -> ActionResult {
        let mut interfaces = self.resources.network_interfaces.clone();
        interfaces.insert(iface.clone())?;
        self.taps.open(&iface)?;
        self.resources.network_interfaces = interfaces;
        Ok(VmmData::Empty)
    }

    /// `PATCH /network-interfaces/{id}` on a running VM: new limits and/or a new firewall,
    /// applied at once; the recorded configuration follows.
    pub(super) fn patch_network_interface(
        &mut self,
        update: &NetworkInterfaceUpdate,
    ) -> ActionResult {
        let id = &update.iface_id;
        let mut net = self
            .devices
            .net(id)
            .ok_or_else(|| ActionError::NoSuchAttachedInterface { id: id.clone() })?;
        net.update(update)
            .map_err(ActionError::PatchNetworkInterface)?;
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
        let missing = || ActionError::NoSuchInterface { id: id.to_string() };
        if self.running.is_some() {
            let net = self.devices.net(id).ok_or_else(missing)?;
            let status = net
                .firewall_status()
                .ok_or_else(|| ActionError::NoFirewall { id: id.to_string() })?;
            return Ok(VmmData::FirewallStatus(Box::new(status)));
        }
        let iface = self
            .resources
            .network_interfaces
            .iter()
            .find(|i| i.iface_id == id)
            .ok_or_else(missing)?;
        Ok(VmmData::ConfiguredFirewall(ConfiguredFirewall {
            iface_id: id.to_string(),
            rules: iface.effective_firewall(),
        }))
    }
}
