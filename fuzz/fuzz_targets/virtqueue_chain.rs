//! The descriptor-chain walk over a guest memory the fuzzer writes: rings, descriptors and
//! indices are all guest-controlled. The drain loop, the chain reader and the buffer checks
//! must never panic, never loop past their budget, and never touch memory outside the guest.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::devices::virtio::buffers::{self, Layout};
use palisade::devices::virtio::chain;
use palisade::devices::virtio::queue::{check_queue, drain, ChainOutcome};
use palisade::vstate::memory::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 0x4000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let Ok(mem) = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    // The first bytes choose the queue size (a power of two up to 256); the rest is memory.
    let size = 1u16 << (data[0] % 9);
    let body = &data[1..];
    let n = body.len().min(MEM);
    if mem.write_slice(&body[..n], GuestAddress(0)).is_err() {
        return;
    }
    let Ok(mut queue) = Queue::new(256) else {
        return;
    };
    queue.set_size(size);
    queue.set_desc_table_address(Some(0), Some(0));
    queue.set_avail_ring_address(Some(0x1000), Some(0));
    queue.set_used_ring_address(Some(0x2000), Some(0));
    queue.set_event_idx(data[0] & 0x80 != 0);
    queue.set_ready(true);
    if check_queue(0, &queue, &mem).is_err() {
        return;
    }
    let mut segments = Vec::new();
    let mut scratch = vec![0u8; 4096];
    let mut calls = 0u32;
    for _ in 0..3 {
        let _ = drain(&mut queue, &mem, |q, head| {
            calls += 1;
            assert!(
                head < q.size(),
                "a head outside the table reached the device"
            );
            if let Err(e) = chain::read_chain(
                &mem,
                GuestAddress(q.desc_table()),
                q.size(),
                head,
                &mut segments,
            ) {
                return ChainOutcome::Broken(e.into());
            }
            assert!(segments.len() <= usize::from(q.size()));
            match Layout::check(&mem, &segments) {
                Ok(layout) => {
                    let n = (layout.readable as usize).min(scratch.len());
                    let _ = buffers::read_stream(&mem, &segments, 0, &mut scratch[..n]);
                    let _ = buffers::last_writable_byte(&mem, &segments);
                    ChainOutcome::Used(0)
                }
                Err(_) => ChainOutcome::Used(0),
            }
        });
    }
    // Each drain handles at most a queue's worth of chains.
    assert!(calls <= 3 * u32::from(size));
});
