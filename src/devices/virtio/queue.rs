//! Queue handling shared by the devices: the checks at activation, and the drain loop that
//! pops chains, lets the device handle each, and stops after `queue size` chains or
//! [`BYTE_BUDGET`] bytes of guest data, whichever comes first, so that a driver that keeps
//! refilling its queue (or queues the same huge chain many times) cannot keep the VMM thread,
//! and with it the API and every other device, busy for more than one slice at a time.

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use crate::vstate::memory::GuestMemory as Memory;

/// The largest queue our devices offer.
pub const MAX_QUEUE_SIZE: u16 = 256;

/// Guest data bytes one drain moves before it yields to the event loop (the chain that
/// crosses the line is finished first; a device caps its own largest chain).
pub const BYTE_BUDGET: u64 = 1 << 20;
/// What walking and checking one descriptor costs, in bytes of [`BYTE_BUDGET`]: a chain of
/// 254 descriptors refused at once still costs a quarter of a drain, so a driver cannot make
/// the thread walk 256 such chains (65,000 descriptors) before the API is served again.
pub const DESCRIPTOR_COST: u64 = 1024;

/// `outcome` with the walk of `descriptors` descriptors added to what it moved.
pub fn charge_descriptors(outcome: ChainOutcome, descriptors: usize) -> ChainOutcome {
    let walk = (descriptors.max(1) as u64).saturating_mul(DESCRIPTOR_COST);
    match outcome {
        ChainOutcome::Used(len) => ChainOutcome::Moved {
            used_len: len,
            moved: u64::from(len).saturating_add(walk),
        },
        ChainOutcome::Moved { used_len, moved } => ChainOutcome::Moved {
            used_len,
            moved: moved.saturating_add(walk),
        },
        other => other,
    }
}

/// A queue the device cannot serve any more: the device needs a reset.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The driver did not set the queue ready.
    #[error("Queue {0} is not ready")]
    NotReady(usize),
    /// A ring is not inside guest memory.
    #[error("The {ring} of queue {queue} at {addr:#x} ({len} bytes) is outside guest memory")]
    RingOutsideMemory {
        /// Which queue.
        queue: usize,
        /// "descriptor table", "available ring" or "used ring".
        ring: &'static str,
        /// Where the driver put it.
        addr: u64,
        /// Its size.
        len: u64,
    },
    /// The available index moved by more than the queue size.
    #[error("The available ring index is invalid")]
    AvailIndex(#[source] virtio_queue::Error),
    /// A head index outside the descriptor table.
    #[error("Head index {index} is outside the queue of size {size}")]
    HeadOutOfRange {
        /// The index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// The used ring or the event index cannot be written.
    #[error("The used ring cannot be updated")]
    Used(#[source] virtio_queue::Error),
    /// The chain's structure is broken.
    #[error(transparent)]
    Chain(#[from] super::chain::ChainError),
    /// A chain the device cannot even answer (a block request without a status byte).
    #[error("A request without a device-writable status byte")]
    NoStatus,
}

/// Checks, at DRIVER_OK, that queue `index` is ready and its three rings lie in guest memory.
pub fn check_queue(index: usize, queue: &Queue, mem: &Memory) -> Result<(), QueueError> {
    if !queue.ready() {
        return Err(QueueError::NotReady(index));
    }
    let size = u64::from(queue.size());
    let rings = [
        (
            "descriptor table",
            queue.desc_table(),
            16 * size,
            Permissions::Read,
        ),
        (
            "available ring",
            queue.avail_ring(),
            6 + 2 * size,
            Permissions::Read,
        ),
        (
            "used ring",
            queue.used_ring(),
            6 + 8 * size,
            Permissions::Write,
        ),
    ];
    for (ring, addr, len, access) in rings {
        if !mem.check_range(GuestAddress(addr), len as usize, access) {
            return Err(QueueError::RingOutsideMemory {
                queue: index,
                ring,
                addr,
                len,
            });
        }
    }
    Ok(())
}

/// What the device did with one chain.
#[derive(Debug)]
pub enum ChainOutcome {
    /// Done: add it to the used ring with this many bytes written (and as many moved).
    Used(u32),
    /// Done: add it to the used ring with `used_len` bytes written, after moving `moved`
    /// bytes of guest data (charged to the drain's byte budget).
    Moved {
        /// The used ring's length field.
        used_len: u32,
        /// Bytes copied to or from guest memory for this chain.
        moved: u64,
    },
    /// Taken from the ring and in flight (an asynchronous engine): it goes to the used ring
    /// when it completes; `moved` bytes are charged to the drain's byte budget.
    Taken {
        /// Bytes the request moves.
        moved: u64,
    },
    /// The rate limiter said "not now": leave it in the ring for later.
    Throttled,
    /// The queue cannot be trusted any more.
    Broken(QueueError),
}

/// Why a drain stopped.
#[derive(Debug)]
pub enum DrainEnd {
    /// The ring is empty and notifications are enabled again.
    Empty,
    /// `queue size` chains or [`BYTE_BUDGET`] bytes were handled and more may wait: the
    /// caller kicks itself to continue after the event loop served everything else.
    Budget,
    /// The rate limiter blocked.
    Throttled,
    /// The device needs a reset.
    Broken(QueueError),
}

/// The next available head, checked against the queue size.
fn pop_head(queue: &mut Queue, mem: &Memory) -> Result<Option<u16>, QueueError> {
    let size = queue.size();
    let mut iter = queue.iter(mem).map_err(QueueError::AvailIndex)?;
    let Some(chain) = iter.next() else {
        return Ok(None);
    };
    let index = chain.head_index();
    if index >= size {
        return Err(QueueError::HeadOutOfRange { index, size });
    }
    Ok(Some(index))
}

/// Hands every available chain to `handle`, at most `queue size` of them (and as many looks
/// at the ring) and about [`BYTE_BUDGET`] bytes; returns why it stopped and whether any chain
/// went to the used ring.
pub fn drain(
    queue: &mut Queue,
    mem: &Memory,
    mut handle: impl FnMut(&Queue, u16) -> ChainOutcome,
) -> (DrainEnd, bool) {
    let mut used_any = false;
    let mut handled = 0u16;
    let mut moved_total = 0u64;
    loop {
        if handled >= queue.size() || moved_total >= BYTE_BUDGET {
            return (DrainEnd::Budget, used_any);
        }
        let head = match pop_head(queue, mem) {
            Ok(Some(head)) => head,
            // Empty: enable notifications, then look again for what came in meanwhile. A
            // look counts against the budget too: a driver that moves avail.idx back and forth
            // cannot keep this loop going.
            Ok(None) => match queue.enable_notification(mem) {
                Ok(true) => {
                    handled += 1;
                    continue;
                }
                Ok(false) => return (DrainEnd::Empty, used_any),
                Err(e) => return (DrainEnd::Broken(QueueError::Used(e)), used_any),
            },
            Err(e) => return (DrainEnd::Broken(e), used_any),
        };
        handled += 1;
        let (used_len, moved) = match handle(queue, head) {
            ChainOutcome::Used(len) => (len, u64::from(len)),
            ChainOutcome::Moved { used_len, moved } => (used_len, moved),
            ChainOutcome::Taken { moved } => {
                moved_total = moved_total.saturating_add(moved);
                continue;
            }
            ChainOutcome::Throttled => {
                queue.go_to_previous_position();
                return (DrainEnd::Throttled, used_any);
            }
            ChainOutcome::Broken(e) => return (DrainEnd::Broken(e), used_any),
        };
        if let Err(e) = queue.add_used(mem, head, used_len) {
            return (DrainEnd::Broken(QueueError::Used(e)), used_any);
        }
        used_any = true;
        moved_total = moved_total.saturating_add(moved);
    }
}

/// True when the driver wants an interrupt for what was just used.
pub fn needs_interrupt(queue: &mut Queue, mem: &Memory) -> bool {
    // An unreadable used_event is the driver's problem: interrupt rather than stall it.
    queue.needs_notification(mem).unwrap_or(true)
}

/// The number of chains waiting in the ring.
#[cfg(test)]
pub fn pending(queue: &Queue, mem: &Memory) -> u16 {
    queue
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .map(|idx| (idx - std::num::Wrapping(queue.next_avail())).0)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes};

    use super::*;

    fn memory() -> Memory {
        Memory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn one_descriptor_chains(q: &MockSplitQueue<Memory>, count: u16) {
        let descs: Vec<RawDescriptor> = (0..count)
            .map(|i| RawDescriptor::from(Descriptor::new(0x8000 + u64::from(i) * 0x100, 16, 0, 0)))
            .collect();
        q.add_desc_chains(&descs, 0).unwrap();
    }

    #[test]
    fn rings_outside_memory_are_refused_at_activation() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = q.create_queue().unwrap();
        check_queue(0, &queue, &mem).unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(0xf_fff0))
            .unwrap();
        assert!(matches!(
            check_queue(0, &queue, &mem),
            Err(QueueError::RingOutsideMemory {
                ring: "used ring",
                ..
            })
        ));
        queue.set_ready(false);
        assert!(matches!(
            check_queue(0, &queue, &mem),
            Err(QueueError::NotReady(0))
        ));
    }

    #[test]
    fn a_drain_handles_at_most_the_queue_size() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = q.create_queue().unwrap();
        one_descriptor_chains(&q, 16);
        // A driver that moved avail.idx 16 ahead, then (hostile) keeps it there: each drain
        // stops after 16 chains.
        let mut seen = 0;
        let (end, used) = drain(&mut queue, &mem, |_, _| {
            seen += 1;
            ChainOutcome::Used(0)
        });
        assert!(used);
        assert_eq!(seen, 16);
        assert!(matches!(end, DrainEnd::Budget));
        assert_eq!(q.used().idx().load(), 16);
        let (end, _) = drain(&mut queue, &mem, |_, _| ChainOutcome::Used(0));
        assert!(matches!(end, DrainEnd::Empty));
    }

    #[test]
    fn a_drain_yields_after_the_byte_budget() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = q.create_queue().unwrap();
        one_descriptor_chains(&q, 16);
        // Chains that each move a third of the budget (the same guest pages queued again and
        // again): the drain stops after the chain that crosses the budget.
        let mut seen = 0;
        let (end, used) = drain(&mut queue, &mem, |_, _| {
            seen += 1;
            ChainOutcome::Moved {
                used_len: 0,
                moved: BYTE_BUDGET / 3 + 1,
            }
        });
        assert!(used);
        assert_eq!(seen, 3);
        assert!(matches!(end, DrainEnd::Budget));
        assert_eq!(q.used().idx().load(), 3);
    }

    #[test]
    fn long_chains_refused_at_once_still_use_up_the_budget() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = q.create_queue().unwrap();
        one_descriptor_chains(&q, 16);
        // Each chain "walks" 400 descriptors and moves nothing (a refused request): the
        // drain yields after three of them instead of walking 16 x 400.
        let mut seen = 0;
        let (end, _) = drain(&mut queue, &mem, |_, _| {
            seen += 1;
            charge_descriptors(ChainOutcome::Used(1), 400)
        });
        assert_eq!(seen, 3);
        assert!(matches!(end, DrainEnd::Budget));
    }

    #[test]
    fn an_avail_index_too_far_ahead_breaks_the_queue() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = q.create_queue().unwrap();
        q.avail().idx().store(17);
        let (end, _) = drain(&mut queue, &mem, |_, _| ChainOutcome::Used(0));
        assert!(matches!(end, DrainEnd::Broken(QueueError::AvailIndex(_))));
    }

    #[test]
    fn a_head_outside_the_table_breaks_the_queue() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = q.create_queue().unwrap();
        q.avail().ring().ref_at(0).unwrap().store(99);
        q.avail().idx().store(1);
        let (end, _) = drain(&mut queue, &mem, |_, _| ChainOutcome::Used(0));
        assert!(matches!(
            end,
            DrainEnd::Broken(QueueError::HeadOutOfRange {
                index: 99,
                size: 16
            })
        ));
    }

    #[test]
    fn a_throttled_chain_stays_in_the_ring() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = q.create_queue().unwrap();
        one_descriptor_chains(&q, 2);
        let (end, used) = drain(&mut queue, &mem, |_, _| ChainOutcome::Throttled);
        assert!(matches!(end, DrainEnd::Throttled));
        assert!(!used);
        assert_eq!(pending(&queue, &mem), 2);
        let mut heads = Vec::new();
        drain(&mut queue, &mem, |_, head| {
            heads.push(head);
            ChainOutcome::Used(1)
        });
        assert_eq!(heads, vec![0, 1]);
        assert_eq!(
            mem.read_obj::<u32>(q.used_addr().unchecked_add(8)).unwrap(),
            1
        );
    }
}
