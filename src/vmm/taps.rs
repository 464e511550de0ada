//! Taps opened before the VM is built: `PUT /network-interfaces` opens its tap at once, as
//! Firecracker does, the controller opens those of a config file before the build, and the
//! device manager builds each interface on the tap opened for it. A tap is opened once.

use std::collections::HashMap;

use crate::devices::virtio::net::config::{InterfaceList, NetworkInterfaceConfig};
use crate::devices::virtio::net::tap::Tap;
use crate::devices::virtio::net::{open_tap, NetError};

/// Taps opened before boot, by interface id.
#[derive(Debug, Default)]
pub struct OpenTaps(HashMap<String, Tap>);

impl OpenTaps {
    /// Opens the tap of `iface`, or keeps the one already open for it under the same name
    /// (a second TUNSETIFF on a tap we hold would answer EBUSY). On failure the interface's
    /// previous tap stays open.
    pub fn open(&mut self, iface: &NetworkInterfaceConfig) -> Result<(), NetError> {
        let id = &iface.iface_id;
        match self.0.get(id) {
            Some(tap) if tap.name() == iface.host_dev_name => {}
            _ => {
                let tap = open_tap(iface)?;
                self.0.insert(id.clone(), tap);
            }
        }
        Ok(())
    }

    /// Opens the taps of the interfaces that have none open (those of a config file).
    pub fn open_missing(&mut self, interfaces: &InterfaceList) -> Result<(), NetError> {
        interfaces.iter().try_for_each(|iface| self.open(iface))
    }

    /// Takes out the tap opened for `iface`, if it was opened under its current name.
    pub fn take(&mut self, iface: &NetworkInterfaceConfig) -> Option<Tap> {
        self.0
            .remove(&iface.iface_id)
            .filter(|tap| tap.name() == iface.host_dev_name)
    }
}
