//! The generation ID device: how a guest learns it was cloned. Palisade's machine has no
//! ACPI, so instead of VMGenID it offers one read-only 4 KiB MMIO page, announced on the
//! kernel command line as `palisade_genid=4K@0xc0014000` (as `virtio_mmio.device=` announces
//! virtio devices). Little-endian layout:
//!
//! ```text
//! 0x00  u64  magic, the ASCII bytes "PLSDGNID"
//! 0x08  u32  layout version (1)
//! 0x0c  u32  reserved, 0
//! 0x10  16 bytes  generation ID: fresh random bytes (getrandom) at boot and at every restore
//! 0x20  u64  restore counter: 0 at boot, the snapshot's value + 1 at every restore
//! 0x28..0x1000  0
//! ```
//!
//! Reads of 1 to 8 bytes at any offset answer from this image; writes are ignored. A guest
//! that reads an ID other than the one it saw last is a clone (or restored): it reseeds its
//! RNGs and drops identities it must not share. The values change only while the vCPUs do not
//! run (a restore builds a new device), so a guest never sees half an update. No interrupt:
//! the guest reads when it wants to know.

use serde::{Deserialize, Serialize};

use super::bus::BusDevice;
use super::virtio::rng::host_random;

/// The page's first eight bytes.
pub const MAGIC: [u8; 8] = *b"PLSDGNID";
/// The layout version at offset 8.
pub const LAYOUT_VERSION: u32 = 1;
/// Offset of the 16-byte generation ID.
pub const ID_OFFSET: usize = 0x10;
/// Offset of the restore counter.
pub const COUNTER_OFFSET: usize = 0x20;
/// Bytes of the page that are not zero.
const IMAGE_LEN: usize = 0x28;

/// Why a generation cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// getrandom failed.
    #[error("Cannot read random bytes for the generation ID")]
    Random(#[source] std::io::Error),
    /// The saved counter cannot be incremented.
    #[error("The snapshot's restore counter is at its maximum ({0})")]
    CounterExhausted(u64),
}

/// What the guest reads: saved in a snapshot, replaced at every restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationState {
    /// The generation ID.
    pub id: [u8; 16],
    /// Restores since the first boot.
    pub counter: u64,
}

fn random_id() -> Result<[u8; 16], GenerationError> {
    let mut id = [0u8; 16];
    host_random(&mut id).map_err(GenerationError::Random)?;
    Ok(id)
}

impl GenerationState {
    /// The generation of a freshly booted VM: a random ID, counter 0.
    pub fn first() -> Result<Self, GenerationError> {
        Ok(Self {
            id: random_id()?,
            counter: 0,
        })
    }

    /// Checks a saved generation (from a state file): its counter must have room for the
    /// restore.
    pub fn validate(&self) -> Result<(), GenerationError> {
        if self.counter == u64::MAX {
            return Err(GenerationError::CounterExhausted(self.counter));
        }
        Ok(())
    }

    /// The generation of a VM restored from one saved as `self`: a new random ID (never the
    /// saved one), the counter plus one.
    pub fn next(&self) -> Result<Self, GenerationError> {
        self.validate()?;
        let mut id = random_id()?;
        while id == self.id {
            id = random_id()?;
        }
        Ok(Self {
            id,
            counter: self.counter + 1,
        })
    }

    /// The page's non-zero bytes.
    fn image(&self) -> [u8; IMAGE_LEN] {
        let mut image = [0u8; IMAGE_LEN];
        image[..8].copy_from_slice(&MAGIC);
        image[8..12].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        image[ID_OFFSET..ID_OFFSET + 16].copy_from_slice(&self.id);
        image[COUNTER_OFFSET..COUNTER_OFFSET + 8].copy_from_slice(&self.counter.to_le_bytes());
        image
    }
}

/// The read-only page on the MMIO bus.
pub struct GenerationIdDevice {
    image: [u8; IMAGE_LEN],
}

impl GenerationIdDevice {
    /// The page showing `state`.
    pub fn new(state: &GenerationState) -> Self {
        Self {
            image: state.image(),
        }
    }
}

impl BusDevice for GenerationIdDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| self.image.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {
        // Read-only: the guest cannot change what a clone will see.
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn read(dev: &mut GenerationIdDevice, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0xaa; len];
        dev.read(offset, &mut data);
        data
    }

    #[test]
    fn the_page_shows_magic_version_id_and_counter_and_ignores_writes() {
        let state = GenerationState {
            id: *b"0123456789abcdef",
            counter: 7,
        };
        let mut dev = GenerationIdDevice::new(&state);
        assert_eq!(read(&mut dev, 0, 8), b"PLSDGNID");
        assert_eq!(read(&mut dev, 8, 4), 1u32.to_le_bytes());
        assert_eq!(read(&mut dev, 0x10, 8), b"01234567");
        assert_eq!(read(&mut dev, 0x18, 8), b"89abcdef");
        assert_eq!(read(&mut dev, 0x20, 8), 7u64.to_le_bytes());
        dev.write(0x20, &[0xff; 8]);
        assert_eq!(read(&mut dev, 0x20, 8), 7u64.to_le_bytes());
        assert_eq!(
            read(&mut dev, 0x24, 8),
            [0; 8],
            "straddling the end reads zeros"
        );
        assert_eq!(read(&mut dev, 0xff8, 8), [0; 8]);
        assert_eq!(read(&mut dev, u64::MAX, 1), [0]);
    }

    #[test]
    fn a_restore_gets_a_new_random_id_and_the_counter_plus_one() {
        let first = GenerationState::first().unwrap();
        assert_eq!(first.counter, 0);
        let a = first.next().unwrap();
        let b = first.next().unwrap();
        assert_eq!((a.counter, b.counter), (1, 1));
        assert_ne!(a.id, first.id);
        assert_ne!(a.id, b.id, "two clones of one snapshot differ");
        assert_eq!(a.next().unwrap().counter, 2);
    }

    #[test]
    fn a_saved_counter_at_its_maximum_is_refused() {
        let saved = GenerationState {
            id: [0; 16],
            counter: u64::MAX,
        };
        assert!(matches!(
            saved.validate(),
            Err(GenerationError::CounterExhausted(u64::MAX))
        ));
        assert!(saved.next().is_err());
    }
}
