//! The two kinds of metric a group holds: a [`Counter`] reports what it counted since the
//! previous flush (Firecracker's `SharedIncMetric`), a [`Gauge`] its last stored value
//! (`SharedStoreMetric`). Whoever owns the event increments the counter itself; no metric reads
//! another module's state.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Serialize, Serializer};

/// A count of events, reported as the increase since the previous flush.
#[derive(Debug, Default)]
pub struct Counter {
    total: AtomicU64,
    reported: AtomicU64,
}

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self {
            total: AtomicU64::new(0),
            reported: AtomicU64::new(0),
        }
    }

    /// Counts one event.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Counts `n` events.
    pub fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// Events counted since the start (not reset by flushes).
    pub fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Serialising a counter is reporting it: the next serialisation starts from here.
impl Serialize for Counter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let total = self.count();
        let delta = total.wrapping_sub(self.reported.load(Ordering::Relaxed));
        let result = serializer.serialize_u64(delta);
        if result.is_ok() {
            self.reported.store(total, Ordering::Relaxed);
        }
        result
    }
}

/// A value that is stored, not counted (a duration, a flag); every flush reports the last one.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// A gauge at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Replaces the value.
    pub fn store(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The last stored value.
    pub fn fetch(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Gauge {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.fetch())
    }
}
