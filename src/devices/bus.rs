//! Port-I/O and MMIO buses: address ranges mapped to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers reads and writes at offsets inside its range.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the start of the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` from the start of the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of bus setup.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or overflows.
    #[error("Invalid bus range at {base:#x} of length {len:#x}")]
    InvalidRange {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The range overlaps another device's.
    #[error("Bus range at {0:#x} overlaps another device")]
    Overlap(u64),
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A set of non-overlapping device ranges. Built before the vCPUs start, then shared.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// Maps `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if let Some((prev_base, (prev_len, _))) = self.devices.range(..end).next_back() {
            if prev_base + prev_len > base {
                return Err(BusError::Overlap(base));
            }
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (base, (len, device)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset.checked_add(size as u64)? <= *len).then_some((offset, device))
    }

    /// Reads from the device at `addr`; false when no device covers the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`; false when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device; a device whose lock was poisoned by a panic is still used, since a
/// device panic already ends the VMM (panic = abort in release builds).
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

/// The two buses a vCPU dispatches its exits to.
#[derive(Default)]
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    fn dev(v: u8) -> SharedDevice {
        Arc::new(Mutex::new(Echo(v)))
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let mut bus = Bus::default();
        bus.insert(dev(10), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 12);
        assert!(bus.write(0x3f8, &[1]));
        assert!(bus.read(0x3f8, &mut b));
        assert_eq!(b[0], 1);
    }

    #[test]
    fn accesses_outside_or_straddling_miss() {
        let mut bus = Bus::default();
        bus.insert(dev(0), 0x100, 4).unwrap();
        let mut b = [0u8; 2];
        assert!(!bus.read(0x104, &mut b));
        assert!(!bus.read(0x103, &mut b));
        assert!(!bus.read(0xff, &mut b[..1]));
        assert!(!bus.read(u64::MAX, &mut b));
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = Bus::default();
        bus.insert(dev(0), 0x100, 0x10).unwrap();
        assert_eq!(bus.insert(dev(0), 0x108, 4), Err(BusError::Overlap(0x108)));
        assert_eq!(bus.insert(dev(0), 0xf8, 0x10), Err(BusError::Overlap(0xf8)));
        assert!(bus.insert(dev(0), 0x110, 0).is_err());
        assert!(bus.insert(dev(0), u64::MAX, 2).is_err());
        bus.insert(dev(0), 0x110, 1).unwrap();
    }
}
