//! virtio-net receive with mergeable buffers (VIRTIO_NET_F_MRG_RXBUF): frames from a stand-in
//! tap (a datagram socket) go into an RX queue the fuzzer lays out. Two layouts:
//! - hostile: the rings and descriptors are the fuzzer's bytes (buffers may point at the rings,
//!   at each other, outside memory): serving must never panic.
//! - checked: the fuzzer picks the chains (lengths, flags, how many descriptors each, which
//!   heads are posted and when), over buffers that alias nothing; then after every drain the
//!   used index has moved by whole frames only, each frame's chains hold its bytes in order,
//!   and the first chain's `num_buffers` is the number of chains the frame took.

#![no_main]

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use palisade::devices::virtio::net::config::NetworkInterfaceConfig;
use palisade::devices::virtio::net::tap::Tap;
use palisade::devices::virtio::net::Net;
use palisade::devices::virtio::{
    ActivateContext, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use palisade::metrics::NetDeviceMetrics;
use palisade::vstate::memory::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 0x4_0000;
const SIZE: u16 = 16;
const DESC: u64 = 0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
/// Checked layout: descriptor i's buffer is at BUFS + i * BUF, at most BUF bytes.
const BUFS: u64 = 0x1000;
const BUF: u64 = 0x1000;
const VNET_HDR_LEN: usize = 12;
const NUM_BUFFERS: usize = 10;
const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

/// Reads fuzzer bytes in order; zeros when they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
}

fn queue(event_idx: bool) -> Option<Queue> {
    let mut queue = Queue::new(SIZE).ok()?;
    queue.set_size(SIZE);
    queue.set_desc_table_address(Some(DESC as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    Some(queue)
}

/// The checked layout: descriptors split into chains of 1 to 3, each descriptor with its own
/// buffer. Returns the chains: (head, [(addr, len, writable)]).
fn lay_out_chains(mem: &GuestMemory, input: &mut Input) -> Vec<(u16, Vec<(u64, u32, bool)>)> {
    let mut chains = Vec::new();
    let mut i = 0u16;
    while i < SIZE {
        let n = (1 + u16::from(input.byte() % 3)).min(SIZE - i);
        let mut bufs = Vec::new();
        for k in 0..n {
            let d = i + k;
            let addr = BUFS + u64::from(d) * BUF;
            let len = u32::from(input.u16()) % (BUF as u32 + 1);
            // One in eight is device-readable: the chain is refused.
            let writable = input.byte() % 8 != 0;
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if k + 1 < n {
                flags |= VRING_DESC_F_NEXT;
            }
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..].copy_from_slice(&(d + 1).to_le_bytes());
            let _ = mem.write_slice(&raw, GuestAddress(DESC + 16 * u64::from(d)));
            bufs.push((addr, len, writable));
        }
        chains.push((i, bufs));
        i += n;
    }
    chains
}

/// Posts `heads` from avail index `idx` on; returns the new index.
fn post(mem: &GuestMemory, idx: u16, heads: &[u16]) -> u16 {
    let mut idx = idx;
    for &head in heads {
        let slot = AVAIL + 4 + 2 * u64::from(idx % SIZE);
        let _ = mem.write_obj(head.to_le(), GuestAddress(slot));
        idx = idx.wrapping_add(1);
    }
    let _ = mem.write_obj(idx.to_le(), GuestAddress(AVAIL + 2));
    idx
}

/// The bytes of the chain at `head` the device wrote (`len` of its writable buffers).
fn chain_bytes(mem: &GuestMemory, chain: &[(u64, u32, bool)], len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut left = len as usize;
    for &(addr, blen, writable) in chain {
        if !writable || left == 0 {
            continue;
        }
        let n = (blen as usize).min(left);
        let mut buf = vec![0u8; n];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        out.extend_from_slice(&buf);
        left -= n;
    }
    assert_eq!(left, 0, "a used length beyond the chain's writable bytes");
    out
}

/// Checks the used elements from `from` to the queue's used index: whole frames only, each
/// with its bytes and `num_buffers`. Returns the new used index and the next frame expected.
fn check_used(
    mem: &GuestMemory,
    net: &Net,
    chains: &[(u16, Vec<(u64, u32, bool)>)],
    frames: &[Vec<u8>],
    from: u16,
    mut next_frame: usize,
) -> (u16, usize) {
    let q = &net.active_queues().expect("active")[0];
    let to = q.next_used();
    let idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert_eq!(
        u16::from_le(idx),
        to,
        "the used index in memory is the queue's"
    );
    let element = |i: u16| {
        let at = USED + 4 + 8 * u64::from(i % SIZE);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        (u16::try_from(id).expect("head"), len)
    };
    let chain_of = |head: u16| {
        &chains
            .iter()
            .find(|(h, _)| *h == head)
            .expect("a used head is a posted chain's")
            .1
    };
    let mut i = from;
    while i != to {
        let (head, len) = element(i);
        i = i.wrapping_add(1);
        if len == 0 {
            continue; // refused, or held and given back
        }
        // A frame starts here: gather its chains until its bytes are all there.
        let mut bytes = chain_bytes(mem, chain_of(head), len);
        let mut count = 1u16;
        while bytes.len() <= VNET_HDR_LEN {
            assert_ne!(i, to, "the used index moved into a frame");
            let (head, len) = element(i);
            i = i.wrapping_add(1);
            assert_ne!(len, 0, "an empty chain inside a frame");
            bytes.extend(chain_bytes(mem, chain_of(head), len));
            count += 1;
        }
        // The frame's first byte is its number (see below): frames arrive in order.
        let n = usize::from(bytes[VNET_HDR_LEN]);
        assert!(
            n >= next_frame && n < frames.len(),
            "frame {n} after {next_frame}"
        );
        let frame = &frames[n];
        while bytes.len() < VNET_HDR_LEN + frame.len() {
            assert_ne!(i, to, "the used index moved into a frame");
            let (head, len) = element(i);
            i = i.wrapping_add(1);
            assert_ne!(len, 0, "an empty chain inside a frame");
            bytes.extend(chain_bytes(mem, chain_of(head), len));
            count += 1;
        }
        assert_eq!(
            bytes.len(),
            VNET_HDR_LEN + frame.len(),
            "a chain beyond the frame"
        );
        assert_eq!(&bytes[VNET_HDR_LEN..], &frame[..], "frame {n}'s bytes");
        let num_buffers = u16::from_le_bytes([bytes[NUM_BUFFERS], bytes[NUM_BUFFERS + 1]]);
        assert_eq!(num_buffers, count, "num_buffers of frame {n}");
        next_frame = n + 1;
    }
    (to, next_frame)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mode = input.byte();
    let checked = mode & 1 == 0;
    let event_idx = mode & 2 != 0;
    let Ok(mem) = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    let Ok((tap_end, peer)) = UnixDatagram::pair() else {
        return;
    };
    if tap_end.set_nonblocking(true).is_err() || peer.set_nonblocking(true).is_err() {
        return;
    }
    let config = NetworkInterfaceConfig {
        iface_id: "eth0".into(),
        host_dev_name: "fuzz0".into(),
        guest_mac: None,
        mtu: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
        firewall: None,
    };
    let metrics = Arc::new(NetDeviceMetrics::new());
    let tap = Tap::from_fd(OwnedFd::from(tap_end));
    let Ok(mut net) = Net::with_tap(&config, tap, metrics.clone()) else {
        return;
    };
    // Up to 4 frames of up to 6000 bytes; the first byte of each is its number.
    let frames: Vec<Vec<u8>> = (0..usize::from(input.byte() % 5))
        .map(|n| {
            let len = 14 + usize::from(input.u16()) % 6000;
            let mut f: Vec<u8> = (0..len).map(|i| (i * 7 + n * 13) as u8).collect();
            f[0] = n as u8;
            f
        })
        .collect();
    for f in &frames {
        let mut datagram = vec![0u8; VNET_HDR_LEN];
        datagram.extend_from_slice(f);
        if peer.send(&datagram).is_err() {
            return;
        }
    }
    let (chains, first_heads, later_heads) = if checked {
        let chains = lay_out_chains(&mem, &mut input);
        // Each chain is posted in the first round, the second, or never.
        let (mut first, mut later) = (Vec::new(), Vec::new());
        for (head, _) in &chains {
            match input.byte() % 3 {
                0 => first.push(*head),
                1 => later.push(*head),
                _ => {}
            }
        }
        (chains, first, later)
    } else {
        let n = input.0.len().min(MEM);
        let _ = mem.write_slice(&input.0[..n], GuestAddress(0));
        (Vec::new(), Vec::new(), Vec::new())
    };
    let Some(rx) = queue(event_idx) else {
        return;
    };
    let Some(tx) = queue(false) else {
        return;
    };
    let accepted = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX;
    let features = net.avail_features()
        & accepted
        & !(if event_idx {
            0
        } else {
            VIRTIO_RING_F_EVENT_IDX
        });
    let ctx = ActivateContext {
        mem: mem.clone(),
        queues: vec![rx, tx],
        features,
    };
    if net.activate(ctx).is_err() {
        return;
    }
    if !checked {
        for _ in 0..3 {
            net.process_rx();
        }
        assert!(metrics.rx_packets_count.count() <= frames.len() as u64);
        return;
    }
    let avail = post(&mem, 0, &first_heads);
    let (mut used, mut next_frame) = (0u16, 0usize);
    for round in 0..3 {
        if round == 1 {
            post(&mem, avail, &later_heads);
        }
        net.process_rx();
        (used, next_frame) = check_used(&mem, &net, &chains, &frames, used, next_frame);
    }
    assert!(metrics.rx_packets_count.count() <= frames.len() as u64);
});
