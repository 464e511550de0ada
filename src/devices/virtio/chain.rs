//! Descriptor chains read defensively: the guest writes the descriptor table, so every index
//! and flag is checked before the device looks at a buffer.
//!
//! [`read_chain`] follows the `next` links from a head with at most `queue size` steps and
//! refuses indirect descriptors (never offered). `buffers` then checks the buffers themselves.

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::vstate::memory::GuestMemory as Memory;

/// Size of one split-ring descriptor.
const DESCRIPTOR_SIZE: u64 = 16;

/// A chain whose structure is broken: the queue cannot be trusted any more.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// A head or `next` index outside the descriptor table.
    #[error("Descriptor index {index} is outside the queue of size {size}")]
    IndexOutOfRange {
        /// The index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// More descriptors than the queue has (a loop, or a chain that never ends).
    #[error("The descriptor chain is longer than the queue size {0}")]
    TooLong(u16),
    /// VIRTQ_DESC_F_INDIRECT without the feature.
    #[error("Indirect descriptor, which was not negotiated")]
    Indirect,
    /// The descriptor table entry itself is not in guest memory.
    #[error("Descriptor {0} cannot be read")]
    Unreadable(u16),
}

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE).
    pub writable: bool,
}

/// Reads the chain starting at `head` into `out` (cleared first).
pub fn read_chain(
    mem: &Memory,
    desc_table: GuestAddress,
    queue_size: u16,
    head: u16,
    out: &mut Vec<Segment>,
) -> Result<(), ChainError> {
    out.clear();
    let mut index = head;
    for _ in 0..queue_size {
        if index >= queue_size {
            return Err(ChainError::IndexOutOfRange {
                index,
                size: queue_size,
            });
        }
        let addr = desc_table
            .checked_add(u64::from(index) * DESCRIPTOR_SIZE)
            .ok_or(ChainError::Unreadable(index))?;
        let raw: RawDescriptor = mem
            .read_obj(addr)
            .map_err(|_| ChainError::Unreadable(index))?;
        let desc = Descriptor::from(raw);
        if desc.refers_to_indirect_table() {
            return Err(ChainError::Indirect);
        }
        out.push(Segment {
            addr: desc.addr(),
            len: desc.len(),
            writable: desc.is_write_only(),
        });
        if !desc.has_next() {
            return Ok(());
        }
        index = desc.next();
    }
    Err(ChainError::TooLong(queue_size))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::mock::MockSplitQueue;

    use super::*;
    use crate::devices::virtio::buffers::{last_writable_byte, Layout};

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    fn memory() -> Memory {
        Memory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn store(q: &MockSplitQueue<Memory>, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let desc = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        q.desc_table().store(index, desc).unwrap();
    }

    fn walk(
        mem: &Memory,
        q: &MockSplitQueue<Memory>,
        head: u16,
    ) -> Result<Vec<Segment>, ChainError> {
        let mut out = Vec::new();
        read_chain(mem, q.desc_table_addr(), 16, head, &mut out).map(|_| out)
    }

    #[test]
    fn a_well_formed_chain_reads_in_order() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        store(&q, 0, 0x8000, 16, NEXT, 5);
        store(&q, 5, 0x9000, 512, WRITE | NEXT, 2);
        store(&q, 2, 0xa000, 1, WRITE, 0);
        let segs = walk(&mem, &q, 0).unwrap();
        assert_eq!(segs.len(), 3);
        assert_eq!(
            segs[1],
            Segment {
                addr: GuestAddress(0x9000),
                len: 512,
                writable: true
            }
        );
        let layout = Layout::check(&mem, &segs).unwrap();
        assert_eq!(
            layout,
            Layout {
                readable: 16,
                writable: 513
            }
        );
        assert_eq!(last_writable_byte(&mem, &segs), Some(GuestAddress(0xa000)));
    }

    #[test]
    fn a_loop_is_a_chain_longer_than_the_queue() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        store(&q, 0, 0x8000, 16, NEXT, 1);
        store(&q, 1, 0x8000, 16, NEXT, 0);
        assert_eq!(walk(&mem, &q, 0), Err(ChainError::TooLong(16)));
    }

    #[test]
    fn indexes_outside_the_table_and_indirect_descriptors_are_refused() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        store(&q, 0, 0x8000, 16, NEXT, 16);
        assert_eq!(
            walk(&mem, &q, 0),
            Err(ChainError::IndexOutOfRange {
                index: 16,
                size: 16
            })
        );
        assert_eq!(
            walk(&mem, &q, 40),
            Err(ChainError::IndexOutOfRange {
                index: 40,
                size: 16
            })
        );
        store(&q, 3, 0x8000, 32, VRING_DESC_F_INDIRECT as u16, 0);
        assert_eq!(walk(&mem, &q, 3), Err(ChainError::Indirect));
    }

    #[test]
    fn a_descriptor_table_outside_memory_is_unreadable() {
        let mem = memory();
        let mut out = Vec::new();
        let r = read_chain(&mem, GuestAddress(0x10_0000), 16, 0, &mut out);
        assert_eq!(r, Err(ChainError::Unreadable(0)));
        let r = read_chain(&mem, GuestAddress(u64::MAX - 8), 16, 1, &mut out);
        assert_eq!(r, Err(ChainError::Unreadable(1)));
    }
}
