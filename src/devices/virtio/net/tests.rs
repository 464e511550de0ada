//! The device against mock queues and a packet socket standing in for the tap.

#![allow(clippy::unwrap_used)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use palisade_firewall::FirewallConfig;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::config::NetworkInterfaceConfig;
use super::tap::{socket_pair, VNET_HDR_LEN};
use super::*;
use crate::devices::virtio::{ActivateContext, VirtioDevice};
use crate::metrics::NetDeviceMetrics;
use crate::rate_limiter::TokenBucketConfig;
use crate::vstate::memory::GuestMemory;

mod mergeable;

const MAC: [u8; 6] = [6, 0, 10, 0, 0, 2];
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

fn config(firewall: Option<FirewallConfig>) -> NetworkInterfaceConfig {
    NetworkInterfaceConfig {
        iface_id: "eth0".into(),
        host_dev_name: "tap0".into(),
        guest_mac: Some("06:00:0a:00:00:02".into()),
        mtu: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
        firewall,
    }
}

struct Rig<'a> {
    net: Net,
    peer: OwnedFd,
    rxq: MockSplitQueue<'a, GuestMemory>,
    txq: MockSplitQueue<'a, GuestMemory>,
}

/// A rig whose driver accepts every offered feature but mergeable RX buffers (one frame, one
/// chain; [`mergeable`] has the rest).
fn rig(mem: &GuestMemory, cfg: NetworkInterfaceConfig) -> Rig<'_> {
    rig_with(mem, cfg, !(1 << VIRTIO_NET_F_MRG_RXBUF), None)
}

/// A rig whose driver accepts the offered features that are in `accepted`, with the RX used
/// ring at `rx_used` when given (the mock queue's own used ring overlaps the avail ring's
/// `used_event` field).
fn rig_with(
    mem: &GuestMemory,
    cfg: NetworkInterfaceConfig,
    accepted: u64,
    rx_used: Option<u64>,
) -> Rig<'_> {
    let (tap, peer) = socket_pair();
    let mut net = Net::with_tap(&cfg, tap, Arc::new(NetDeviceMetrics::new())).unwrap();
    let rxq = MockSplitQueue::create(mem, GuestAddress(0), 16);
    let txq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
    let mut rx: Queue = rxq.create_queue().unwrap();
    if let Some(addr) = rx_used {
        rx.try_set_used_ring_address(GuestAddress(addr)).unwrap();
    }
    net.activate(ActivateContext {
        mem: mem.clone(),
        queues: vec![rx, txq.create_queue().unwrap()],
        features: net.avail_features() & accepted,
    })
    .unwrap();
    Rig {
        net,
        peer,
        rxq,
        txq,
    }
}

/// An Ethernet + IPv4 + UDP frame from `src_ip` (MAC `src_mac`) to 10.0.0.1:7000.
fn udp_frame(src_mac: [u8; 6], src_ip: [u8; 4], dst_ip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8 + 4];
    f[..6].copy_from_slice(&[0xaa; 6]);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&32u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src_ip);
    ip[16..20].copy_from_slice(&dst_ip);
    let mut sum = 0u32;
    for c in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&7000u16.to_be_bytes());
    f[38..40].copy_from_slice(&12u16.to_be_bytes());
    f[42..].copy_from_slice(b"ping");
    f
}

/// Puts `frame` (after a zero virtio-net header) in guest memory at `addr`.
fn put_tx(mem: &GuestMemory, addr: u64, frame: &[u8]) -> u32 {
    mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(addr))
        .unwrap();
    mem.write_slice(frame, GuestAddress(addr + VNET_HDR_LEN as u64))
        .unwrap();
    (VNET_HDR_LEN + frame.len()) as u32
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// Queues one TX chain per (address, length): a single device-readable buffer each.
fn queue_tx(r: &Rig, chains: &[(u64, u32)]) {
    let descs: Vec<_> = chains.iter().map(|&(a, l)| desc(a, l, 0, 0)).collect();
    r.txq.add_desc_chains(&descs, 0).unwrap();
}

/// A limit of `size` operations, refilled every `refill_time` ms.
fn ops_limit(size: u64, refill_time: u64) -> Option<RateLimiterConfig> {
    Some(RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time,
        }),
    })
}

fn peer_recv(peer: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70_000];
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`, valid for the call.
    let n = unsafe {
        libc::recv(
            peer.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

fn peer_send(peer: &OwnedFd, data: &[u8]) {
    // SAFETY: send reads `data.len()` bytes from `data`, valid for the call.
    let n = unsafe { libc::send(peer.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
    assert_eq!(n, data.len() as isize);
}

fn used_len(mem: &GuestMemory, q: &MockSplitQueue<GuestMemory>, i: u64) -> u32 {
    mem.read_obj(q.used_addr().unchecked_add(8 + 8 * i))
        .unwrap()
}

#[test]
fn honest_frames_reach_the_tap_and_spoofed_ones_are_consumed_and_counted() {
    let mem = memory();
    let fw = FirewallConfig {
        allowed_ips: vec!["10.0.0.2/32".parse().unwrap()],
        ..FirewallConfig::default()
    };
    let mut r = rig(&mem, config(Some(fw)));
    let honest = udp_frame(MAC, [10, 0, 0, 2], [10, 0, 0, 1]);
    let spoofed_ip = udp_frame(MAC, [10, 0, 0, 9], [10, 0, 0, 1]);
    let spoofed_mac = udp_frame([2, 2, 2, 2, 2, 2], [10, 0, 0, 2], [10, 0, 0, 1]);
    let l0 = put_tx(&mem, 0x10_0000, &honest);
    let l1 = put_tx(&mem, 0x10_1000, &spoofed_ip);
    let l2 = put_tx(&mem, 0x10_2000, &spoofed_mac);
    queue_tx(&r, &[(0x10_0000, l0), (0x10_1000, l1), (0x10_2000, l2)]);
    r.net.process_tx();
    assert_eq!(r.txq.used().idx().load(), 3, "every chain is consumed");
    let sent = peer_recv(&r.peer).unwrap();
    assert_eq!(&sent[VNET_HDR_LEN..], &honest[..]);
    assert_eq!(
        peer_recv(&r.peer),
        None,
        "spoofed frames never reach the tap"
    );
    let m = &r.net.metrics;
    assert_eq!(m.tx_packets_count.count(), 1);
    assert_eq!(m.fw_spoof_ip.count(), 1);
    assert_eq!(m.fw_spoof_mac.count(), 1);
    assert_eq!(m.tx_spoofed_mac_count.count(), 1);
}

#[test]
fn bad_tx_chains_are_refused_and_a_loop_needs_a_reset() {
    let mem = memory();
    let mut r = rig(&mem, config(None));
    // A header shorter than 12 bytes, and a buffer outside guest memory.
    queue_tx(&r, &[(0x10_0000, 4), (0x50_0000, 64)]);
    r.net.process_tx();
    assert_eq!(r.txq.used().idx().load(), 2);
    assert_eq!(r.net.metrics.tx_fails.count(), 2);
    assert_eq!(peer_recv(&r.peer), None);
    r.txq
        .desc_table()
        .store(5, desc(0x10_0000, 64, NEXT, 5))
        .unwrap();
    r.txq.avail().ring().ref_at(2).unwrap().store(5);
    r.txq.avail().idx().store(3);
    r.net.process_tx();
    assert!(r.net.core.interrupt.needs_reset());
}

#[test]
fn frames_from_the_tap_fill_one_buffer_and_dropped_ones_never_touch_guest_memory() {
    let mem = memory();
    let mut r = rig(&mem, config(Some(FirewallConfig::default())));
    r.rxq
        .add_desc_chains(
            &[
                desc(0x20_0000, 2048, WRITE, 0),
                desc(0x20_1000, 2048, WRITE, 0),
            ],
            0,
        )
        .unwrap();
    mem.write_slice(&[0xee; 2048], GuestAddress(0x20_0000))
        .unwrap();
    // Inbound UDP with no ingress rule: default deny. Then ARP to the guest: passes.
    let denied = udp_frame([0xaa; 6], [10, 0, 0, 1], [10, 0, 0, 2]);
    let mut arp = vec![0u8; 42];
    arp[..6].copy_from_slice(&MAC);
    arp[6..12].copy_from_slice(&[0xaa; 6]);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    arp[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    arp[22..28].copy_from_slice(&[0xaa; 6]);
    arp[28..32].copy_from_slice(&[10, 0, 0, 1]);
    arp[32..38].copy_from_slice(&MAC);
    arp[38..42].copy_from_slice(&[10, 0, 0, 2]);
    for frame in [&denied, &arp] {
        let mut with_hdr = vec![0u8; VNET_HDR_LEN];
        with_hdr.extend_from_slice(frame);
        peer_send(&r.peer, &with_hdr);
    }
    r.net.process_rx();
    assert_eq!(
        r.rxq.used().idx().load(),
        1,
        "only the ARP reply is delivered"
    );
    assert_eq!(used_len(&mem, &r.rxq, 0), (VNET_HDR_LEN + 42) as u32);
    let mut got = vec![0u8; VNET_HDR_LEN + 42];
    mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers is 1");
    assert_eq!(&got[VNET_HDR_LEN..], &arp[..]);
    assert_eq!(r.net.metrics.fw_default_deny.count(), 1);
    assert_eq!(r.net.metrics.fw_ingress_drops.count(), 1);
}

#[test]
fn a_frame_larger_than_the_buffer_is_dropped_and_the_buffer_returned_empty() {
    let mem = memory();
    let mut r = rig(&mem, config(None));
    r.rxq
        .add_desc_chains(&[desc(0x20_0000, 32, WRITE, 0)], 0)
        .unwrap();
    let mut with_hdr = vec![0u8; VNET_HDR_LEN];
    with_hdr.extend_from_slice(&udp_frame([0xaa; 6], [10, 0, 0, 1], [10, 0, 0, 2]));
    peer_send(&r.peer, &with_hdr);
    r.net.process_rx();
    assert_eq!(r.rxq.used().idx().load(), 1);
    assert_eq!(used_len(&mem, &r.rxq, 0), 0);
    assert_eq!(r.net.metrics.rx_fails.count(), 1);
    assert_eq!(r.net.rx_frame.len, 0);
}

#[test]
fn a_throttled_tx_frame_waits_in_the_ring_and_is_judged_once() {
    let mem = memory();
    let mut cfg = config(None);
    cfg.tx_rate_limiter = ops_limit(1, 100);
    let mut r = rig(&mem, cfg);
    let frame = udp_frame(MAC, [10, 0, 0, 2], [10, 0, 0, 1]);
    let l = put_tx(&mem, 0x10_0000, &frame);
    queue_tx(&r, &[(0x10_0000, l), (0x10_0000, l)]);
    r.net.process_tx();
    assert_eq!(r.txq.used().idx().load(), 1, "the second frame waits");
    std::thread::sleep(std::time::Duration::from_millis(150));
    r.net.tx_limiter.on_timer().unwrap();
    r.net.process_tx();
    assert_eq!(r.txq.used().idx().load(), 2);
    assert!(peer_recv(&r.peer).is_some() && peer_recv(&r.peer).is_some());
    assert_eq!(r.net.metrics.tx_packets_count.count(), 2);
}

#[test]
fn features_offer_offloads_and_the_mac_is_the_config_space() {
    let mem = memory();
    let r = rig(&mem, config(None));
    let f = r.net.avail_features();
    assert_ne!(f & (1 << VIRTIO_NET_F_HOST_TSO4), 0);
    assert_ne!(f & (1 << VIRTIO_NET_F_GUEST_CSUM), 0);
    assert_ne!(f & (1 << VIRTIO_NET_F_MAC), 0);
    assert_ne!(f & (1 << VIRTIO_NET_F_MRG_RXBUF), 0);
    let mut mac = [0u8; 6];
    r.net.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    assert_eq!(tap_offloads(f), TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
    assert_eq!(tap_offloads(f & !(1 << VIRTIO_NET_F_GUEST_CSUM)), 0);
}

#[test]
fn an_offload_header_that_would_rewrite_the_judged_frame_never_reaches_the_tap() {
    let mem = memory();
    let fw = FirewallConfig {
        allowed_ips: vec!["10.0.0.2/32".parse().unwrap()],
        ..FirewallConfig::default()
    };
    let mut r = rig(&mem, config(Some(fw)));
    let frame = udp_frame(MAC, [10, 0, 0, 2], [10, 0, 0, 1]);
    // The attack: NEEDS_CSUM with the host's checksum write aimed at the UDP destination port
    // (L4 start 34 + 2), then at the IPv4 source address (26 + 0).
    let aimed = |start: u16, offset: u16, at: u64| {
        let len = put_tx(&mem, at, &frame);
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[0] = 1;
        hdr[6..8].copy_from_slice(&start.to_le_bytes());
        hdr[8..10].copy_from_slice(&offset.to_le_bytes());
        hdr[10] = 0x7f; // num_buffers: never passed on
        mem.write_slice(&hdr, GuestAddress(at)).unwrap();
        len
    };
    let l0 = aimed(34, 2, 0x10_0000);
    let l1 = aimed(26, 0, 0x10_1000);
    let l2 = aimed(34, 6, 0x10_2000);
    queue_tx(&r, &[(0x10_0000, l0), (0x10_1000, l1), (0x10_2000, l2)]);
    r.net.process_tx();
    assert_eq!(r.txq.used().idx().load(), 3, "every chain is consumed");
    // Only the honest checksum placement goes out, with the header rebuilt.
    let sent = peer_recv(&r.peer).unwrap();
    assert_eq!(&sent[VNET_HDR_LEN..], &frame[..]);
    assert_eq!(sent[..VNET_HDR_LEN], [1, 0, 0, 0, 0, 0, 34, 0, 6, 0, 0, 0]);
    assert_eq!(peer_recv(&r.peer), None);
    assert_eq!(r.net.metrics.tx_bad_vnet_hdr.count(), 2);
    assert_eq!(r.net.metrics.tx_packets_count.count(), 1);
}

#[test]
fn refused_headers_and_gso_segments_are_charged_to_the_tx_ops_limit() {
    let mem = memory();
    let mut cfg = config(None);
    // Four frames an hour.
    cfg.tx_rate_limiter = ops_limit(4, 3_600_000);
    let mut r = rig(&mem, cfg);
    // A refused header costs one frame: refusing is work the guest makes us do.
    let udp = udp_frame(MAC, [10, 0, 0, 2], [10, 0, 0, 1]);
    let l0 = put_tx(&mem, 0x10_0000, &udp);
    let mut aimed = [0u8; VNET_HDR_LEN];
    aimed[0] = 1;
    aimed[6] = 34;
    aimed[8] = 2; // the checksum write aimed at the destination port
    mem.write_slice(&aimed, GuestAddress(0x10_0000)).unwrap();
    // A TSO frame of 3,000 payload bytes in 1,400-byte segments: three frames on the wire.
    let mut tso = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC, [0xaa; 6])
        .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
        .tcp(40000, 443, 1, 65535)
        .write(&mut tso, &[0u8; 3000])
        .unwrap();
    let l1 = put_tx(&mem, 0x11_0000, &tso);
    let mut gso = [0u8; VNET_HDR_LEN];
    gso[0] = 1;
    gso[1] = 1; // TCPV4
    gso[4..6].copy_from_slice(&1400u16.to_le_bytes());
    gso[6] = 34;
    gso[8] = 16;
    mem.write_slice(&gso, GuestAddress(0x11_0000)).unwrap();
    let l2 = put_tx(&mem, 0x12_0000, &udp);
    queue_tx(&r, &[(0x10_0000, l0), (0x11_0000, l1), (0x12_0000, l2)]);
    r.net.process_tx();
    assert_eq!(r.txq.used().idx().load(), 2, "the honest frame waits");
    assert_eq!(r.net.metrics.tx_bad_vnet_hdr.count(), 1);
    assert_eq!(r.net.metrics.tx_packets_count.count(), 1);
    assert!(r.net.metrics.tx_rate_limiter_throttled.count() >= 1);
    let sent = peer_recv(&r.peer).unwrap();
    assert_eq!(&sent[VNET_HDR_LEN..], &tso[..]);
    assert_eq!(peer_recv(&r.peer), None);
}

/// `rig` with the MMDS responder on the interface (V1, 169.254.169.254, data `{"a":1}`).
fn mmds_rig(mem: &GuestMemory, cfg: NetworkInterfaceConfig) -> Rig<'_> {
    let mut r = rig(mem, cfg);
    let mut config = mmds::MmdsNetConfig::new("eth0");
    config.version = mmds::MmdsVersion::V1;
    let data = Arc::new(std::sync::RwLock::new(serde_json::json!({"a": 1})));
    let key = mmds::TokenKey::from_bytes([3; 32]);
    let stack = mmds::MmdsStack::new(config, key, data, 9, Instant::now()).unwrap();
    r.net.set_mmds(stack);
    r
}

/// The guest's ARP request for `target`, from MAC with 10.0.0.2.
fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&MAC);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&MAC);
    f[28..32].copy_from_slice(&[10, 0, 0, 2]);
    f[38..42].copy_from_slice(&target);
    f
}

const MMDS_IP: [u8; 4] = [169, 254, 169, 254];

#[test]
fn on_an_mmds_interface_arp_for_the_mmds_address_is_answered_into_rx_and_never_reaches_the_tap() {
    let mem = memory();
    let fw = FirewallConfig {
        allowed_ips: vec!["10.0.0.2/32".parse().unwrap()],
        ..FirewallConfig::default()
    };
    let mut r = mmds_rig(&mem, config(Some(fw)));
    r.rxq
        .add_desc_chains(
            &[
                desc(0x20_0000, 2048, WRITE, 0),
                desc(0x20_1000, 2048, WRITE, 0),
            ],
            0,
        )
        .unwrap();
    mem.write_slice(&[0xee; 2048], GuestAddress(0x20_0000))
        .unwrap();
    // A frame from the tap waits behind the responder's answer.
    let mut from_tap = vec![0u8; VNET_HDR_LEN];
    from_tap.extend_from_slice(&udp_frame([0xaa; 6], [10, 0, 0, 1], [10, 0, 0, 2]));
    peer_send(&r.peer, &from_tap);
    let l0 = put_tx(&mem, 0x10_0000, &arp_request(MMDS_IP));
    queue_tx(&r, &[(0x10_0000, l0)]);
    r.net.process_tx();
    assert_eq!(r.txq.used().idx().load(), 1);
    assert_eq!(peer_recv(&r.peer), None, "MMDS ARP never reaches the tap");
    r.net.process_rx();
    assert!(r.rxq.used().idx().load() >= 1);
    let mut got = vec![0u8; VNET_HDR_LEN + 42];
    mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(&got[..10], &[0; 10], "zeroed virtio-net header");
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers is 1");
    let reply = &got[VNET_HDR_LEN..];
    assert_eq!(&reply[..6], &MAC, "to the guest");
    assert_eq!(&reply[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&reply[22..28], &mmds::DEFAULT_MAC);
    assert_eq!(&reply[28..32], &MMDS_IP);
    let m = &r.net.metrics;
    assert_eq!(m.mmds_frames_in.count(), 1);
    assert_eq!(m.mmds_frames_out.count(), 1);
    assert_eq!(m.fw_egress_drops.count(), 0, "the firewall never saw it");
    assert_eq!(m.tx_packets_count.count(), 0);
    assert_eq!(r.net.mmds_counters().unwrap().frames_out, 1);
}

#[test]
fn on_an_mmds_interface_other_frames_to_the_mmds_address_are_dropped_and_counted() {
    let mem = memory();
    // No firewall: the drop is the MMDS interface's own.
    let mut r = mmds_rig(&mem, config(None));
    let udp = udp_frame(MAC, [10, 0, 0, 2], MMDS_IP);
    let elsewhere = udp_frame(MAC, [10, 0, 0, 2], [10, 0, 0, 1]);
    let l0 = put_tx(&mem, 0x10_0000, &udp);
    let l1 = put_tx(&mem, 0x10_1000, &elsewhere);
    queue_tx(&r, &[(0x10_0000, l0), (0x10_1000, l1)]);
    r.net.process_tx();
    assert_eq!(r.txq.used().idx().load(), 2);
    let sent = peer_recv(&r.peer).unwrap();
    assert_eq!(&sent[VNET_HDR_LEN..], &elsewhere[..], "other traffic flows");
    assert_eq!(peer_recv(&r.peer), None);
    let m = &r.net.metrics;
    assert_eq!(m.mmds_other_drops.count(), 1);
    assert_eq!(m.mmds_frames_in.count(), 0);
    assert_eq!(m.tx_packets_count.count(), 1);
}

#[test]
fn without_mmds_frames_to_the_mmds_address_follow_the_firewall_as_any_other() {
    let mem = memory();
    let mut r = rig(&mem, config(None));
    let arp = arp_request(MMDS_IP);
    let udp = udp_frame(MAC, [10, 0, 0, 2], MMDS_IP);
    let l0 = put_tx(&mem, 0x10_0000, &arp);
    let l1 = put_tx(&mem, 0x10_1000, &udp);
    queue_tx(&r, &[(0x10_0000, l0), (0x10_1000, l1)]);
    r.net.process_tx();
    assert_eq!(&peer_recv(&r.peer).unwrap()[VNET_HDR_LEN..], &arp[..]);
    assert_eq!(&peer_recv(&r.peer).unwrap()[VNET_HDR_LEN..], &udp[..]);
    assert_eq!(r.net.metrics.mmds_other_drops.count(), 0);
    assert!(r.net.mmds_counters().is_none());
}

#[test]
fn on_an_mmds_interface_the_responders_counters_reach_the_net_metrics_group() {
    let mem = memory();
    let mut r = mmds_rig(&mem, config(None));
    // A TCP fragment to the MMDS address: the responder drops and counts it.
    let mut fragment = udp_frame(MAC, [10, 0, 0, 2], MMDS_IP);
    fragment[14 + 9] = 6;
    fragment[14 + 6] = 0x20;
    let l0 = put_tx(&mem, 0x10_0000, &fragment);
    queue_tx(&r, &[(0x10_0000, l0)]);
    r.net.process_tx();
    assert_eq!(peer_recv(&r.peer), None);
    let m = &r.net.metrics;
    assert_eq!(m.mmds_fragments.count(), 1);
    assert_eq!(m.mmds_frames_in.count(), 1);
    assert_eq!(r.net.mmds_counters().unwrap().fragments, 1);
}

#[test]
fn mmds_frames_are_charged_to_the_tx_limiter_so_a_limit_bounds_them_too() {
    let mem = memory();
    let mut cfg = config(None);
    cfg.tx_rate_limiter = ops_limit(1, 3_600_000);
    let mut r = mmds_rig(&mem, cfg);
    let l0 = put_tx(&mem, 0x10_0000, &arp_request(MMDS_IP));
    queue_tx(&r, &[(0x10_0000, l0), (0x10_0000, l0)]);
    r.net.process_tx();
    assert_eq!(
        r.txq.used().idx().load(),
        1,
        "the second MMDS frame waits for tokens"
    );
    let m = &r.net.metrics;
    assert_eq!(m.mmds_frames_in.count(), 1);
    assert_eq!(m.tx_rate_limiter_throttled.count(), 1);
    assert_eq!(peer_recv(&r.peer), None);
}

#[test]
fn an_mtu_is_offered_in_the_config_space_and_longer_plain_frames_are_dropped_and_counted() {
    let mem = memory();
    let without = rig(&mem, config(None));
    assert_eq!(without.net.avail_features() & (1 << VIRTIO_NET_F_MTU), 0);
    let mut r = rig(
        &mem,
        NetworkInterfaceConfig {
            mtu: Some(100),
            guest_mac: None,
            ..config(None)
        },
    );
    assert_ne!(r.net.avail_features() & (1 << VIRTIO_NET_F_MTU), 0);
    let mut space = [0u8; 12];
    r.net.read_config(0, &mut space);
    assert_eq!(u16::from_le_bytes([space[10], space[11]]), 100);
    // 14 + 100 bytes fits; 14 + 101 does not.
    let mut fits = udp_frame(MAC, [10, 0, 0, 2], [10, 0, 0, 1]);
    fits.resize(114, 0);
    let mut over = fits.clone();
    over.push(0);
    let l0 = put_tx(&mem, 0x10_0000, &fits);
    let l1 = put_tx(&mem, 0x10_1000, &over);
    queue_tx(&r, &[(0x10_0000, l0), (0x10_1000, l1)]);
    r.net.process_tx();
    assert_eq!(r.txq.used().idx().load(), 2, "every chain is consumed");
    assert_eq!(peer_recv(&r.peer).unwrap().len(), VNET_HDR_LEN + 114);
    assert_eq!(
        peer_recv(&r.peer),
        None,
        "the frame over the MTU never leaves"
    );
    assert_eq!(r.net.metrics.tx_over_mtu_drops.count(), 1);
    assert_eq!(r.net.metrics.tx_packets_count.count(), 1);
    // With an 802.1Q tag the header is 18 bytes; no MTU, no limit.
    let mut tagged = fits.clone();
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    assert!(!super::tx::over_mtu(&tagged, Some(100)));
    tagged.push(0);
    assert!(super::tx::over_mtu(&tagged, Some(100)));
    assert!(!super::tx::over_mtu(&tagged, None));
}

#[test]
fn a_qinq_frame_has_both_tags_left_out_of_its_mtu_and_a_third_tag_counts_as_payload() {
    let mtu = Some(100);
    // Ethernet header, 100 bytes of payload.
    let mut plain = vec![0u8; 114];
    plain[12..14].copy_from_slice(&[0x08, 0x00]);
    assert!(!super::tx::over_mtu(&plain, mtu));
    // 802.1ad alone (an S-tag): 18 bytes of header.
    let mut s_tag = plain.clone();
    s_tag.splice(12..12, [0x88, 0xa8, 0x00, 0x07]);
    assert!(!super::tx::over_mtu(&s_tag, mtu));
    s_tag.push(0);
    assert!(super::tx::over_mtu(&s_tag, mtu));
    // QinQ, 802.1ad then 802.1Q: 22 bytes of header.
    let mut qinq = plain.clone();
    qinq.splice(12..12, [0x88, 0xa8, 0x00, 0x07, 0x81, 0x00, 0x00, 0x05]);
    assert_eq!(qinq.len(), 22 + 100);
    assert!(!super::tx::over_mtu(&qinq, mtu));
    qinq.push(0);
    assert!(super::tx::over_mtu(&qinq, mtu));
    // A third tag is not left out: stacking tags buys no extra bytes.
    let mut triple = plain.clone();
    triple.splice(
        12..12,
        [0x88, 0xa8, 0, 7, 0x81, 0x00, 0, 5, 0x81, 0x00, 0, 6],
    );
    assert_eq!(triple.len(), 22 + 104);
    assert!(super::tx::over_mtu(&triple, mtu));
    // A frame too short to hold its tags is judged by its length alone.
    assert!(!super::tx::over_mtu(&[0x88; 13], mtu));
}
