//! Mergeable RX buffers (VIRTIO_NET_F_MRG_RXBUF): a frame over several chains, whole or not
//! at all, and the chains a hostile driver gets wrong.

use super::*;

/// A rig without a firewall (no guest MAC: any bytes from the tap go to the guest) whose
/// driver accepts every offered feature, mergeable buffers and EVENT_IDX included.
fn mergeable_rig(mem: &GuestMemory) -> Rig<'_> {
    let mut cfg = config(None);
    cfg.guest_mac = None;
    let r = rig_with(mem, cfg, u64::MAX, Some(USED));
    assert!(r.net.mergeable());
    r
}

/// The RX used ring, away from the avail ring's `used_event`.
const USED: u64 = 0x8000;

/// The used ring's index.
fn used_idx(mem: &GuestMemory) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap()
}

/// `len` frame bytes after a zero header, as the tap hands them over.
fn tap_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i % 251) as u8));
    f
}

/// Posts one single-buffer chain per (address, length, flags), descriptors from `first`.
fn post(r: &Rig, first: u16, buffers: &[(u64, u32, u16)]) {
    let descs: Vec<_> = buffers.iter().map(|&(a, l, f)| desc(a, l, f, 0)).collect();
    r.rxq.add_desc_chains(&descs, first).unwrap();
}

/// The used ring's element `i`: (head, length).
fn used(mem: &GuestMemory, i: u64) -> (u32, u32) {
    let id = mem.read_obj(GuestAddress(USED + 4 + 8 * i)).unwrap();
    let len = mem.read_obj(GuestAddress(USED + 8 + 8 * i)).unwrap();
    (id, len)
}

/// Reads `len` bytes at `addr`.
fn bytes(mem: &GuestMemory, addr: u64, len: u32) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
    out
}

#[test]
fn a_frame_bigger_than_one_buffer_arrives_whole_over_several_with_num_buffers_right() {
    let mem = memory();
    let mut r = mergeable_rig(&mem);
    post(
        &r,
        0,
        &[
            (0x20_0000, 64, WRITE),
            (0x20_1000, 64, WRITE),
            (0x20_2000, 64, WRITE),
            (0x20_3000, 64, WRITE),
        ],
    );
    let sent = tap_frame(150);
    peer_send(&r.peer, &sent);
    r.net.process_rx();
    assert_eq!(used_idx(&mem), 3, "162 bytes take three 64-byte buffers");
    assert_eq!(used(&mem, 0), (0, 64));
    assert_eq!(used(&mem, 1), (1, 64));
    assert_eq!(used(&mem, 2), (2, 34));
    let mut got = bytes(&mem, 0x20_0000, 64);
    got.extend(bytes(&mem, 0x20_1000, 64));
    got.extend(bytes(&mem, 0x20_2000, 34));
    assert_eq!(&got[10..12], &3u16.to_le_bytes(), "num_buffers");
    assert_eq!(got[..10], sent[..10]);
    assert_eq!(got[12..], sent[12..]);
    assert_eq!(r.net.metrics.rx_packets_count.count(), 1);
    assert_eq!(r.net.metrics.rx_fails.count(), 0);
    assert_ne!(
        r.net.core.interrupt.status() & 1,
        0,
        "used_event 0 was passed"
    );
}

#[test]
fn a_frame_in_one_buffer_says_num_buffers_1() {
    let mem = memory();
    let mut r = mergeable_rig(&mem);
    post(&r, 0, &[(0x20_0000, 4096, WRITE)]);
    peer_send(&r.peer, &tap_frame(1500));
    r.net.process_rx();
    assert_eq!(used_idx(&mem), 1);
    assert_eq!(used(&mem, 0), (0, 1512));
    assert_eq!(bytes(&mem, 0x20_000a, 2), 1u16.to_le_bytes());
}

#[test]
fn with_too_few_buffers_posted_the_frame_waits_and_no_part_of_it_is_used() {
    let mem = memory();
    let mut r = mergeable_rig(&mem);
    post(&r, 0, &[(0x20_0000, 64, WRITE), (0x20_1000, 64, WRITE)]);
    peer_send(&r.peer, &tap_frame(150));
    r.net.process_rx();
    assert_eq!(used_idx(&mem), 0, "no partial frame in the used ring");
    assert_eq!(r.net.rx_frame.len, VNET_HDR_LEN + 150, "the frame waits");
    assert_eq!(r.net.metrics.no_rx_avail_buffer.count(), 1);
    assert_eq!(r.net.core.interrupt.status() & 1, 0);
    // The driver's avail_event asks for a notification for its next buffer, not the held ones.
    let avail_event: u16 = mem.read_obj(GuestAddress(USED + 4 + 8 * 16)).unwrap();
    assert_eq!(avail_event, 2);
    post(&r, 2, &[(0x20_2000, 64, WRITE)]);
    r.net.process_rx();
    assert_eq!(used_idx(&mem), 3);
    assert_eq!(used(&mem, 2), (2, 34));
    assert_eq!(bytes(&mem, 0x20_000a, 2), 3u16.to_le_bytes());
    assert_eq!(r.net.rx_frame.len, 0);
    assert_eq!(r.net.metrics.rx_fails.count(), 0);
}

#[test]
fn a_frame_the_whole_ring_cannot_hold_is_dropped_counted_and_its_buffers_returned_unused() {
    let mem = memory();
    let mut r = mergeable_rig(&mem);
    let small: Vec<_> = (0..16u64)
        .map(|i| (0x20_0000 + i * 0x100, 16, WRITE))
        .collect();
    post(&r, 0, &small);
    peer_send(&r.peer, &tap_frame(300));
    r.net.process_rx();
    assert_eq!(used_idx(&mem), 16);
    for i in 0..16 {
        assert_eq!(used(&mem, i).1, 0);
    }
    assert_eq!(r.net.metrics.rx_fails.count(), 1);
    assert_eq!(r.net.metrics.rx_packets_count.count(), 0);
    assert_eq!(r.net.rx_frame.len, 0);
}

#[test]
fn chains_a_hostile_driver_gets_wrong_are_refused_alone_and_the_frame_arrives_whole() {
    let mem = memory();
    let mut r = mergeable_rig(&mem);
    // A good buffer, then one shorter than the header, a device-readable one, a zero-length
    // one, and three good ones.
    post(
        &r,
        0,
        &[
            (0x20_0000, 64, WRITE),
            (0x20_1000, 8, WRITE),
            (0x20_2000, 64, 0),
            (0x20_3000, 0, WRITE),
            (0x20_4000, 64, WRITE),
            (0x20_5000, 64, WRITE),
            (0x20_6000, 64, WRITE),
        ],
    );
    let sent = tap_frame(150);
    peer_send(&r.peer, &sent);
    r.net.process_rx();
    assert_eq!(used_idx(&mem), 7);
    // The good buffer held when the bad one came goes back unused, before the bad ones.
    for (i, head) in [0u32, 1, 2, 3].into_iter().enumerate() {
        assert_eq!(used(&mem, i as u64), (head, 0));
    }
    assert_eq!(used(&mem, 4), (4, 64));
    assert_eq!(used(&mem, 5), (5, 64));
    assert_eq!(used(&mem, 6), (6, 34));
    let mut got = bytes(&mem, 0x20_4000, 64);
    got.extend(bytes(&mem, 0x20_5000, 64));
    got.extend(bytes(&mem, 0x20_6000, 34));
    assert_eq!(&got[10..12], &3u16.to_le_bytes());
    assert_eq!(got[12..], sent[12..]);
    assert_eq!(r.net.metrics.rx_fails.count(), 3);
    assert_eq!(r.net.metrics.rx_packets_count.count(), 1);
    assert!(!r.net.core.interrupt.needs_reset());
}

#[test]
fn with_event_idx_no_interrupt_comes_before_used_event_is_passed() {
    let mem = memory();
    let mut r = mergeable_rig(&mem);
    // used_event (after the avail ring's 16 entries) asks for an interrupt at index 5.
    mem.write_obj(5u16, r.rxq.avail_addr().unchecked_add(4 + 2 * 16))
        .unwrap();
    let buffers: Vec<_> = (0..8u64)
        .map(|i| (0x20_0000 + i * 0x1000, 64, WRITE))
        .collect();
    post(&r, 0, &buffers);
    peer_send(&r.peer, &tap_frame(150));
    r.net.process_rx();
    assert_eq!(used_idx(&mem), 3);
    assert_eq!(r.net.core.interrupt.status() & 1, 0);
    peer_send(&r.peer, &tap_frame(150));
    r.net.process_rx();
    assert_eq!(used_idx(&mem), 6);
    assert_ne!(r.net.core.interrupt.status() & 1, 0, "index 5 was used");
}
