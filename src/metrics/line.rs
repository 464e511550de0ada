//! The per-line fields that are not groups: the flush time, the instance `id` and the
//! operator's `properties`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::MetricsError;
use crate::logger;

/// Serialises as the wall-clock time of the serialisation, in ms since the Unix epoch.
#[derive(Debug, Default)]
pub struct UtcTimestampMs;

impl UtcTimestampMs {
    /// The timestamp field.
    pub const fn new() -> Self {
        Self
    }
}

impl Serialize for UtcTimestampMs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        serializer.serialize_u64(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A flattened `"id": "<instance id>"`, present once `emit_id` enabled it.
#[derive(Debug, Default)]
pub struct InstanceIdField(AtomicBool);

impl InstanceIdField {
    /// Disabled.
    pub const fn new() -> Self {
        Self(AtomicBool::new(false))
    }

    /// Adds `id` to every following line.
    pub fn enable(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Serialize for InstanceIdField {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if self.0.load(Ordering::Relaxed) {
            map.serialize_entry("id", logger::instance_id())?;
        }
        map.end()
    }
}

/// A flattened `"properties": {...}`, present once set.
#[derive(Debug, Default)]
pub struct Properties(OnceLock<BTreeMap<String, String>>);

impl Properties {
    /// Unset.
    pub const fn new() -> Self {
        Self(OnceLock::new())
    }

    /// Sets the pairs, once.
    pub fn set(&self, properties: BTreeMap<String, String>) -> Result<(), MetricsError> {
        self.0
            .set(properties)
            .map_err(|_| MetricsError::AlreadyInitialized)
    }
}

impl Serialize for Properties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(properties) = self.0.get() {
            map.serialize_entry("properties", properties)?;
        }
        map.end()
    }
}
