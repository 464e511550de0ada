//! The registry of per-device groups: one top-level key per device (`block_<drive_id>`,
//! `net_<iface_id>`, `entropy`), each holding the `Arc` its device increments.
//!
//! Keys are reported in Firecracker's order: drives, then interfaces, then vsock, then the
//! entropy device, each kind sorted by key. Firecracker always reports `entropy`; without an entropy device it
//! is a group of zeros.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::devices::{
    BalloonDeviceMetrics, BlockDeviceMetrics, EntropyDeviceMetrics, NetDeviceMetrics,
    VsockDeviceMetrics,
};

/// The group of one registered device.
#[derive(Clone, Debug)]
pub enum DeviceMetrics {
    /// A drive.
    Block(Arc<BlockDeviceMetrics>),
    /// A network interface.
    Net(Arc<NetDeviceMetrics>),
    /// The entropy device.
    Entropy(Arc<EntropyDeviceMetrics>),
    /// The vsock device.
    Vsock(Arc<VsockDeviceMetrics>),
    /// The balloon device.
    Balloon(Arc<BalloonDeviceMetrics>),
}

impl DeviceMetrics {
    /// Where the kind sits in a line: drives, interfaces, entropy.
    fn rank(&self) -> u8 {
        match self {
            Self::Block(_) => 0,
            Self::Net(_) => 1,
            Self::Vsock(_) => 2,
            Self::Entropy(_) => 3,
            Self::Balloon(_) => 4,
        }
    }
}

impl From<Arc<BlockDeviceMetrics>> for DeviceMetrics {
    fn from(metrics: Arc<BlockDeviceMetrics>) -> Self {
        Self::Block(metrics)
    }
}

impl From<Arc<NetDeviceMetrics>> for DeviceMetrics {
    fn from(metrics: Arc<NetDeviceMetrics>) -> Self {
        Self::Net(metrics)
    }
}

impl From<Arc<EntropyDeviceMetrics>> for DeviceMetrics {
    fn from(metrics: Arc<EntropyDeviceMetrics>) -> Self {
        Self::Entropy(metrics)
    }
}

impl From<Arc<BalloonDeviceMetrics>> for DeviceMetrics {
    fn from(metrics: Arc<BalloonDeviceMetrics>) -> Self {
        Self::Balloon(metrics)
    }
}

impl From<Arc<VsockDeviceMetrics>> for DeviceMetrics {
    fn from(metrics: Arc<VsockDeviceMetrics>) -> Self {
        Self::Vsock(metrics)
    }
}

impl Serialize for DeviceMetrics {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Block(m) => m.serialize(serializer),
            Self::Net(m) => m.serialize(serializer),
            Self::Entropy(m) => m.serialize(serializer),
            Self::Vsock(m) => m.serialize(serializer),
            Self::Balloon(m) => m.serialize(serializer),
        }
    }
}

/// Every registered device's group, serialised (flattened) as top-level keys.
#[derive(Debug, Default)]
pub struct DeviceRegistry(Mutex<BTreeMap<(u8, String), DeviceMetrics>>);

impl DeviceRegistry {
    /// No devices.
    pub const fn new() -> Self {
        Self(Mutex::new(BTreeMap::new()))
    }

    /// Reports `metrics` under the top-level `key` from the next flush on, in place of any
    /// group registered under that key before.
    pub fn register(&self, key: String, metrics: impl Into<DeviceMetrics>) {
        let metrics = metrics.into();
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|(_, k), _| *k != key);
        map.insert((metrics.rank(), key), metrics);
    }

    /// The group registered under `key`.
    pub fn get(&self, key: &str) -> Option<DeviceMetrics> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .find(|((_, k), _)| k == key)
            .map(|(_, m)| m.clone())
    }
}

impl Serialize for DeviceRegistry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let devices = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut map = serializer.serialize_map(None)?;
        let mut has_entropy = false;
        for ((_, key), metrics) in devices.iter() {
            has_entropy |= matches!(metrics, DeviceMetrics::Entropy(_));
            map.serialize_entry(key, metrics)?;
        }
        if !has_entropy {
            map.serialize_entry(EntropyDeviceMetrics::KEY, &EntropyDeviceMetrics::new())?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn devices_are_reported_drives_then_interfaces_then_entropy() {
        let registry = DeviceRegistry::new();
        let entropy = Arc::new(EntropyDeviceMetrics::new());
        registry.register(EntropyDeviceMetrics::KEY.to_string(), entropy.clone());
        registry.register(
            NetDeviceMetrics::key("eth0"),
            Arc::new(NetDeviceMetrics::new()),
        );
        let rootfs = Arc::new(BlockDeviceMetrics::new());
        registry.register(BlockDeviceMetrics::key("rootfs"), rootfs.clone());
        rootfs.read_bytes.add(512);
        entropy.entropy_bytes.add(16);
        let line = serde_json::to_string(&registry).unwrap();
        let at = |key: &str| line.find(&format!("\"{key}\":")).unwrap();
        assert!(at("block_rootfs") < at("net_eth0") && at("net_eth0") < at("entropy"));
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["block_rootfs"]["read_bytes"], 512);
        assert_eq!(json["entropy"]["entropy_bytes"], 16);
    }

    #[test]
    fn entropy_is_reported_as_zeros_without_an_entropy_device() {
        let registry = DeviceRegistry::new();
        let json = serde_json::to_value(&registry).unwrap();
        assert_eq!(json["entropy"]["entropy_bytes"], 0);
        assert_eq!(json.as_object().unwrap().len(), 1);
    }

    #[test]
    fn registering_a_key_again_reports_the_new_group_only() {
        let registry = DeviceRegistry::new();
        let old = Arc::new(BlockDeviceMetrics::new());
        let new = Arc::new(BlockDeviceMetrics::new());
        registry.register(BlockDeviceMetrics::key("a"), old.clone());
        registry.register(BlockDeviceMetrics::key("a"), new.clone());
        old.read_count.inc();
        new.write_count.inc();
        let json = serde_json::to_value(&registry).unwrap();
        assert_eq!(json["block_a"]["read_count"], 0);
        assert_eq!(json["block_a"]["write_count"], 1);
        assert!(matches!(
            registry.get("block_a"),
            Some(DeviceMetrics::Block(_))
        ));
    }
}
