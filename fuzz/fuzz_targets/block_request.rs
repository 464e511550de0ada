//! virtio-blk request parsing over a guest memory and a descriptor list the fuzzer writes.
//! Parsing must never panic, and an accepted request must be inside the disk and within the
//! device's size limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::devices::virtio::block::request::{Request, RequestType, MAX_DATA_BYTES};
use palisade::devices::virtio::buffers;
use palisade::devices::virtio::chain::Segment;
use palisade::vstate::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 0x2_0000;
const CAPACITY: u64 = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 16);
    if rest.len() < count * 9 {
        return;
    }
    let (descs, body) = rest.split_at(count * 9);
    let Ok(mem) = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    let n = body.len().min(MEM);
    if mem.write_slice(&body[..n], GuestAddress(0)).is_err() {
        return;
    }
    let segments: Vec<Segment> = descs
        .chunks_exact(9)
        .map(|d| Segment {
            addr: GuestAddress(u64::from(u32::from_le_bytes([d[0], d[1], d[2], d[3]]))),
            len: u32::from_le_bytes([d[4], d[5], d[6], d[7]]),
            writable: d[8] & 1 != 0,
        })
        .collect();
    let _ = buffers::last_writable_byte(&mem, &segments);
    if let Ok(req) = Request::parse(&mem, &segments, CAPACITY) {
        if matches!(req.kind, RequestType::In | RequestType::Out) {
            assert!(req.data_len > 0 && req.data_len % 512 == 0);
            assert!(req.data_len <= MAX_DATA_BYTES);
            assert!(req.sector + u64::from(req.data_len) / 512 <= CAPACITY);
        }
    }
});
