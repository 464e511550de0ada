//! The virtio-vsock packet header a guest writes on the TX queue. Never panics; an accepted
//! header comes from the guest's CID to the host, is a stream packet with a known op, carries
//! a payload only on RW, never more than 64 KiB nor more than the chain holds, and survives
//! its wire form unchanged. Input: 4 bytes of readable length, then the header bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::devices::virtio::vsock::packet::{check_tx, Header, Op, HDR_LEN, MAX_PKT_LEN};

const GUEST_CID: u64 = 3;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let readable = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let bytes = &data[4..];
    let Ok((hdr, op)) = check_tx(bytes, readable, GUEST_CID) else {
        return;
    };
    assert_eq!(hdr.src_cid, GUEST_CID);
    assert_eq!(hdr.dst_cid, 2);
    assert_eq!(hdr.type_, 1);
    assert_eq!(Op::from_wire(hdr.op), Some(op));
    assert!(hdr.len <= MAX_PKT_LEN);
    assert!(u64::from(hdr.len) + HDR_LEN as u64 <= u64::from(readable));
    assert!(hdr.len == 0 || op == Op::Rw);
    assert_eq!(Header::from_bytes(&hdr.to_bytes()), hdr);
    let rst = hdr.rst_reply();
    assert_eq!((rst.src_port, rst.dst_port), (hdr.dst_port, hdr.src_port));
});
