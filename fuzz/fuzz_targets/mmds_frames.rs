//! The MMDS responder over a sequence of guest frames (ARP, TCP segments to 169.254.169.254:80
//! carrying HTTP, anything else), with the clock moving and the guest draining answers at
//! will. Never panics; the guest-bound queue never exceeds its bound and no answer frame
//! exceeds the MTU; a frame that is not MMDS traffic passes; ARP about the MMDS address is
//! consumed.
//!
//! Input: one byte selects the version, then chunks of `[control, length high, length low,
//! bytes...]`. Control bit 0: the bytes are a raw frame; otherwise they are
//! `[flags, seq 4, ack 4, port low, payload...]` made into a TCP segment from the guest to the
//! MMDS port. Bit 1: drain the answers first; bit 2: poll first; bits 3..8: seconds to advance.

#![no_main]

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use palisade::devices::virtio::net::mmds::classify::{classify, FrameClass};
use palisade::devices::virtio::net::mmds::device::MTU;
use palisade::devices::virtio::net::mmds::limits::AUDIT_LINE_BUDGET;
use palisade::devices::virtio::net::mmds::{
    MmdsLimits, MmdsNetConfig, MmdsStack, MmdsVersion, TokenKey, Verdict, DEFAULT_IPV4,
    DEFAULT_MAC, TX_QUEUE_FRAMES,
};
use palisade::rate_limiter::RateLimiterConfig;

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];

/// A TCP segment from the guest to MMDS:80 (checksums left zero: the stack does not check
/// TCP checksums, as a guest with checksum offload leaves them partial). An ack field of
/// zero becomes `auto_ack` (what the stack sent last, so handshakes can complete).
fn segment(bytes: &[u8], auto_ack: u32) -> Vec<u8> {
    let (head, payload) = bytes.split_at(bytes.len().min(10));
    let mut h = [0u8; 10];
    h[..head.len()].copy_from_slice(head);
    if h[5..9] == [0; 4] {
        h[5..9].copy_from_slice(&auto_ack.to_be_bytes());
    }
    let mut f = Vec::with_capacity(54 + payload.len());
    f.extend_from_slice(&DEFAULT_MAC);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (40 + payload.len()).min(usize::from(u16::MAX)) as u16;
    let mut ip = [
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 0, 0, 0, 0,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[16..20].copy_from_slice(&DEFAULT_IPV4.octets());
    let mut sum: u32 = ip
        .chunks_exact(2)
        .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0xc0, h[9], 0, 80]);
    f.extend_from_slice(&h[1..5]);
    f.extend_from_slice(&h[5..9]);
    f.extend_from_slice(&[0x50, h[0], 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// The sequence number after a TCP segment the stack sent (IPv4 without options, as it sends).
fn next_ack(frame: &[u8]) -> Option<u32> {
    let tcp = frame.get(34..)?;
    if frame.get(12..14)? != [0x08, 0x00] || frame.get(23)? != &6 || tcp.len() < 20 {
        return None;
    }
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let data = tcp.len() - usize::from(tcp[12] >> 4) * 4;
    let flags = u32::from(tcp[13] & 0x03 != 0);
    Some(seq.wrapping_add(data as u32).wrapping_add(flags))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    let mut config = MmdsNetConfig::new("eth0");
    config.version = if selector & 1 == 0 {
        MmdsVersion::V2
    } else {
        MmdsVersion::V1
    };
    config.imds_compat = selector & 2 != 0;
    // No request limit: the wall-clock buckets would make a long input's path depend on
    // timing, so a crash might not replay.
    config.limits = MmdsLimits::new(&RateLimiterConfig::default(), &AUDIT_LINE_BUDGET);
    let store = Arc::new(RwLock::new(serde_json::json!({
        "latest": {"meta-data": {"instance-id": "i-1", "n": 1, "l": [1, 2]}}
    })));
    let epoch = Instant::now();
    let mut stack = match MmdsStack::new(config, TokenKey::from_bytes([7; 32]), store, 1, epoch) {
        Ok(stack) => stack,
        Err(e) => panic!("fixed config refused: {e}"),
    };
    let mut now = epoch;
    let mut auto_ack = 0u32;
    while let [control, high, low, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*high, *low])).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        now += Duration::from_secs(u64::from(control >> 3));
        if control & 2 == 0 {
            while let Some(frame) = stack.pop_guest_frame() {
                assert!(frame.len() <= MTU, "an answer over the MTU");
                auto_ack = next_ack(&frame).unwrap_or(auto_ack);
            }
        }
        if control & 4 != 0 {
            stack.poll(now);
        }
        let frame = if control & 1 != 0 {
            bytes.to_vec()
        } else {
            segment(bytes, auto_ack)
        };
        let class = classify(&frame, DEFAULT_IPV4);
        let verdict = stack.handle_guest_frame(&frame, now);
        match class {
            FrameClass::Other => assert_eq!(verdict, Verdict::Pass),
            _ => assert_eq!(verdict, Verdict::Consumed),
        }
        assert!(stack.pending_guest_frames() <= TX_QUEUE_FRAMES);
    }
});
