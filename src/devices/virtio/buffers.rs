//! The buffers of a chain, checked: non-empty, inside guest memory, device-readable ones
//! before device-writable ones (virtio 1.x 2.7.4.2), the totals within 4 GiB. A chain is seen
//! as two byte streams, the readable one and the writable one, so devices make no assumption
//! about how the driver split its buffers into descriptors (virtio 1.x 2.6.4).

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use super::chain::Segment;
use crate::vstate::memory::GuestMemory as Memory;

/// A chain whose buffers are unusable; the request fails but the queue is sound.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// A buffer of length 0.
    #[error("Descriptor {0} of the chain has length 0")]
    ZeroLength(usize),
    /// A buffer outside guest memory.
    #[error("Buffer at {addr:#x} of {len} bytes is outside guest memory")]
    OutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A device-readable buffer after a device-writable one.
    #[error("Device-readable descriptor {0} follows a device-writable one")]
    ReadableAfterWritable(usize),
    /// More than 4 GiB in one direction.
    #[error("The chain holds more than 4 GiB")]
    TooLarge,
}

/// The byte counts of a chain's two streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes the device may read.
    pub readable: u32,
    /// Bytes the device may write.
    pub writable: u32,
}

impl Layout {
    /// Checks every buffer of `segments` (see the module docs).
    pub fn check(mem: &Memory, segments: &[Segment]) -> Result<Self, LayoutError> {
        let mut readable: u64 = 0;
        let mut writable: u64 = 0;
        for (i, seg) in segments.iter().enumerate() {
            if seg.len == 0 {
                return Err(LayoutError::ZeroLength(i));
            }
            let access = if seg.writable {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if !mem.check_range(seg.addr, seg.len as usize, access) {
                return Err(LayoutError::OutsideMemory {
                    addr: seg.addr.raw_value(),
                    len: seg.len,
                });
            }
            if seg.writable {
                writable += u64::from(seg.len);
            } else if writable > 0 {
                return Err(LayoutError::ReadableAfterWritable(i));
            } else {
                readable += u64::from(seg.len);
            }
        }
        Ok(Self {
            readable: u32::try_from(readable).map_err(|_| LayoutError::TooLarge)?,
            writable: u32::try_from(writable).map_err(|_| LayoutError::TooLarge)?,
        })
    }
}

/// The address of the last byte of the chain when it is device-writable and in guest memory:
/// where a block device writes its status, even for a chain it refuses.
pub fn last_writable_byte(mem: &Memory, segments: &[Segment]) -> Option<GuestAddress> {
    let last = segments.last().filter(|s| s.writable && s.len > 0)?;
    let addr = last.addr.checked_add(u64::from(last.len) - 1)?;
    mem.check_range(addr, 1, Permissions::Write).then_some(addr)
}

/// The pieces of guest memory that hold bytes `[start, start + len)` of the readable
/// (`writable == false`) or writable stream of a checked chain, in order.
pub fn stream_pieces(
    segments: &[Segment],
    writable: bool,
    start: u64,
    len: u64,
) -> impl Iterator<Item = (GuestAddress, usize)> + '_ {
    let end = start.saturating_add(len);
    let mut pos = 0u64;
    segments
        .iter()
        .filter(move |s| s.writable == writable)
        .filter_map(move |s| {
            let seg_start = pos;
            let seg_end = pos + u64::from(s.len);
            pos = seg_end;
            let from = seg_start.max(start);
            let to = seg_end.min(end);
            (from < to).then(|| (s.addr.unchecked_add(from - seg_start), (to - from) as usize))
        })
}

/// Copies `buf.len()` bytes from the readable stream at `start` (a request header).
pub fn read_stream(
    mem: &Memory,
    segments: &[Segment],
    start: u64,
    buf: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut done = 0;
    for (addr, n) in stream_pieces(segments, false, start, buf.len() as u64) {
        mem.read_slice(&mut buf[done..done + n], addr)?;
        done += n;
    }
    Ok(())
}

/// Copies `data` into the writable stream at `start`.
pub fn write_stream(
    mem: &Memory,
    segments: &[Segment],
    start: u64,
    data: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut done = 0;
    for (addr, n) in stream_pieces(segments, true, start, data.len() as u64) {
        mem.write_slice(&data[done..done + n], addr)?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn memory() -> Memory {
        Memory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn buffers_are_checked_against_memory_length_and_order() {
        let mem = memory();
        let seg = |addr: u64, len: u32, writable: bool| Segment {
            addr: GuestAddress(addr),
            len,
            writable,
        };
        assert_eq!(
            Layout::check(&mem, &[seg(0x8000, 0, false)]),
            Err(LayoutError::ZeroLength(0))
        );
        assert_eq!(
            Layout::check(&mem, &[seg(0xf_ff00, 0x200, false)]),
            Err(LayoutError::OutsideMemory {
                addr: 0xf_ff00,
                len: 0x200
            })
        );
        assert!(matches!(
            Layout::check(&mem, &[seg(u64::MAX - 4, 16, false)]),
            Err(LayoutError::OutsideMemory { .. })
        ));
        assert_eq!(
            Layout::check(&mem, &[seg(0x8000, 1, true), seg(0x9000, 1, false)]),
            Err(LayoutError::ReadableAfterWritable(1))
        );
        // Two buffers of 0x80000 bytes each, readable, fit; the totals are u32.
        let l = Layout::check(
            &mem,
            &[seg(0, 0x8_0000, false), seg(0x8_0000, 0x8_0000, false)],
        );
        assert_eq!(l.unwrap().readable, 0x10_0000);
        // A read-only last buffer has no status byte.
        assert_eq!(last_writable_byte(&mem, &[seg(0x8000, 16, false)]), None);
        assert_eq!(last_writable_byte(&mem, &[seg(0xf_ffff, 4, true)]), None);
    }

    #[test]
    fn streams_span_descriptors() {
        let mem = memory();
        let seg = |addr: u64, len: u32, writable: bool| Segment {
            addr: GuestAddress(addr),
            len,
            writable,
        };
        let segs = [
            seg(0x1000, 10, false),
            seg(0x2000, 10, false),
            seg(0x3000, 4, true),
            seg(0x4000, 4, true),
        ];
        let pieces: Vec<_> = stream_pieces(&segs, false, 8, 4).collect();
        assert_eq!(
            pieces,
            vec![(GuestAddress(0x1008), 2), (GuestAddress(0x2000), 2)]
        );
        mem.write_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], GuestAddress(0x1000))
            .unwrap();
        mem.write_slice(&[11, 12], GuestAddress(0x2000)).unwrap();
        let mut header = [0u8; 12];
        read_stream(&mem, &segs, 0, &mut header).unwrap();
        assert_eq!(header, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        write_stream(&mem, &segs, 2, &[0xaa, 0xbb, 0xcc]).unwrap();
        assert_eq!(mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap(), 0xbbaa);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x4000)).unwrap(), 0xcc);
    }
}
