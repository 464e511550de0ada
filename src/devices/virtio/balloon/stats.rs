//! The statistics queue (virtio 1.x 5.5.6.3): the driver hands the device one buffer of
//! `(le16 tag, le64 value)` entries; the device keeps it, and every polling interval gives it
//! back (used) to ask for fresh values, which come back as a new buffer. `GET
//! /balloon/statistics` answers the latest values in Firecracker's shape.
//!
//! A buffer with a device-writable part, a length not a multiple of 10, or more than
//! [`MAX_STATS_BYTES`] is refused (given back at once, counted in `stats_update_fails`);
//! unknown tags are ignored. A new buffer while one is held gives the held one back.

use serde::Serialize;

use super::super::buffers::{read_stream, Layout};
use super::super::chain::Segment;
use crate::vstate::memory::GuestMemory;

/// Bytes of one entry.
const ENTRY: u32 = 10;
/// The largest statistics buffer read (64 entries; Linux sends 16).
pub const MAX_STATS_BYTES: u32 = 64 * ENTRY;

/// `GET /balloon/statistics`: Firecracker's BalloonStats (absent values are left out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BalloonStats {
    /// The target, in pages.
    pub target_pages: u32,
    /// What the driver says the balloon holds, in pages.
    pub actual_pages: u32,
    /// The target, in MiB.
    pub target_mib: u32,
    /// What the driver says the balloon holds, in MiB.
    pub actual_mib: u32,
    /// Tag 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    /// Tag 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    /// Tag 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    /// Tag 3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    /// Tag 4.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    /// Tag 5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    /// Tag 6.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    /// Tag 7.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    /// Tag 8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    /// Tag 9.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    /// Tag 10.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    /// Tag 11.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    /// Tag 12.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    /// Tag 13.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    /// Tag 14.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    /// Tag 15.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

/// The tags the device knows (0 to 15).
pub const KNOWN_TAGS: u16 = 16;

impl BalloonStats {
    /// The value slot of `tag`; None for a tag the device does not know.
    fn slot(&mut self, tag: u16) -> Option<&mut Option<u64>> {
        Some(match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            10 => &mut self.oom_kill,
            11 => &mut self.alloc_stall,
            12 => &mut self.async_scan,
            13 => &mut self.direct_scan,
            14 => &mut self.async_reclaim,
            15 => &mut self.direct_reclaim,
            _ => return None,
        })
    }

    fn set(&mut self, tag: u16, value: u64) {
        if let Some(slot) = self.slot(tag) {
            *slot = Some(value);
        }
    }

    /// The values present, as `(tag, value)` in tag order (a snapshot's copy).
    pub fn entries(&self) -> Vec<(u16, u64)> {
        let mut copy = *self;
        (0..KNOWN_TAGS)
            .filter_map(|tag| copy.slot(tag).and_then(|v| *v).map(|v| (tag, v)))
            .collect()
    }

    /// Values from `entries` (a restored snapshot's): None when a tag is unknown or repeated.
    pub fn from_entries(entries: &[(u16, u64)]) -> Option<Self> {
        let mut stats = Self::default();
        for &(tag, value) in entries {
            let slot = stats.slot(tag)?;
            if slot.replace(value).is_some() {
                return None;
            }
        }
        Some(stats)
    }
}

/// Reads a checked chain's statistics into `stats`; false (nothing changed) when the buffer
/// is refused.
pub fn read_stats(mem: &GuestMemory, segments: &[Segment], stats: &mut BalloonStats) -> bool {
    let Ok(layout) = Layout::check(mem, segments) else {
        return false;
    };
    let len = layout.readable;
    if layout.writable != 0 || len % ENTRY != 0 || len > MAX_STATS_BYTES {
        return false;
    }
    let mut buf = [0u8; MAX_STATS_BYTES as usize];
    let buf = &mut buf[..len as usize];
    if read_stream(mem, segments, 0, buf).is_err() {
        return false;
    }
    let mut fresh = BalloonStats::default();
    for entry in buf.chunks_exact(ENTRY as usize) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let mut value = [0u8; 8];
        value.copy_from_slice(&entry[2..]);
        fresh.set(tag, u64::from_le_bytes(value));
    }
    *stats = fresh;
    true
}
