//! The virtio-net transmit header against the frame it describes. Never panics; an accepted
//! header with checksum offload points exactly at a TCP or UDP checksum field inside the
//! frame, and an accepted GSO header has a sane segment size.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::devices::virtio::net::vnet_hdr::{check_tx, TxOffloads, MIN_GSO_SIZE};

fuzz_target!(|data: &[u8]| {
    if data.len() < 13 {
        return;
    }
    let offloads = TxOffloads {
        csum: data[0] & 1 != 0,
        tso4: data[0] & 2 != 0,
        tso6: data[0] & 4 != 0,
    };
    let (hdr, frame) = data[1..].split_at(12);
    if let Ok(h) = check_tx(hdr, frame, offloads) {
        let bytes = h.to_bytes();
        assert_eq!(&bytes[10..], &[0, 0], "num_buffers is never passed on");
        if h.flags != 0 {
            assert!(offloads.csum);
            let field = usize::from(h.csum_start) + usize::from(h.csum_offset);
            assert!(field + 2 <= frame.len(), "checksum field outside the frame");
            assert!(h.csum_offset == 6 || h.csum_offset == 16);
        }
        if h.is_gso() {
            assert!(h.flags != 0 && h.gso_size >= MIN_GSO_SIZE);
            assert!(usize::from(h.hdr_len) <= frame.len());
        }
    }
});
