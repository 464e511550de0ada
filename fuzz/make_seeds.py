"""Writes the seed inputs of the vnet_hdr, block_request, virtqueue_chain, vsock_packet,
firewall_state and balloon_queues targets into corpus/ (they are committed; run this again only to
change them)."""
import struct


def udp4(dport):
    eth = bytes([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]) + b'\x08\x00'
    payload = b'\0' * 32
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + 8 + len(payload), 0, 0, 64, 17, 0,
                     bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]))
    return eth + ip + struct.pack('!HHHH', 40000, dport, 8 + len(payload), 0) + payload


def tcp4(payload=1000):
    eth = bytes([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]) + b'\x08\x00'
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + 20 + payload, 0, 0, 64, 6, 0,
                     bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]))
    tcp = struct.pack('!HHIIBBHHH', 40000, 443, 1, 0, 0x50, 0x18, 65535, 0, 0)
    return eth + ip + tcp + b'\0' * payload


def hdr(flags, gso, hdr_len, gso_size, csum_start, csum_offset):
    return struct.pack('<BBHHHHH', flags, gso, hdr_len, gso_size, csum_start, csum_offset, 0)


def put(path, data):
    with open(path, 'wb') as f:
        f.write(data)


put('corpus/vnet_hdr/udp_csum_ok', b'\x07' + hdr(1, 0, 0, 0, 34, 6) + udp4(53))
put('corpus/vnet_hdr/udp_csum_aimed_at_port', b'\x07' + hdr(1, 0, 0, 0, 34, 2) + udp4(53))
put('corpus/vnet_hdr/tcp4_tso', b'\x07' + hdr(1, 1, 54, 1400, 34, 16) + tcp4(3000))
put('corpus/vnet_hdr/plain', b'\x00' + hdr(0, 0, 0, 0, 0, 0) + udp4(53))


# block_request: a count, that many 9-byte descriptors (addr le32, len le32, flags), memory.
def desc(addr, length, writable):
    return struct.pack('<IIB', addr, length, writable)


mem = bytearray(0x3000)
mem[0x1000:0x1010] = struct.pack('<IIQ', 0, 0, 2)  # IN at sector 2
put('corpus/block_request/read',
    bytes([3]) + desc(0x1000, 16, 0) + desc(0x2000, 512, 1) + desc(0x2200, 1, 1) + bytes(mem))
mem[0x1000:0x1010] = struct.pack('<IIQ', 1, 0, 0)  # OUT at sector 0
put('corpus/block_request/write',
    bytes([3]) + desc(0x1000, 16, 0) + desc(0x2000, 1024, 0) + desc(0x2200, 1, 1) + bytes(mem))
put('corpus/block_request/same_pages_many_times',
    bytes([15]) + desc(0x1000, 16, 0) + desc(0, 0x10000, 0) * 13 + desc(0x2200, 1, 1)
    + bytes(mem))

# virtqueue_chain: a size selector, then memory (descriptors at 0, avail 0x1000, used 0x2000).
ring = bytearray(0x2100)
for i in range(4):
    ring[i * 16:(i + 1) * 16] = struct.pack('<QIHH', 0x3000, 64, 1 if i < 3 else 0, (i + 1) % 4)
ring[0x1000:0x1004] = struct.pack('<HH', 0, 4)
put('corpus/virtqueue_chain/same_head_four_times', bytes([4]) + bytes(ring))
for i in range(4):
    ring[i * 16:(i + 1) * 16] = struct.pack('<QIHH', 0x3000, 64, 1, (i + 1) % 4)  # a loop
put('corpus/virtqueue_chain/loop', bytes([2]) + bytes(ring))

# vsock_packet: 4 bytes of readable length, then a 44-byte virtio_vsock_hdr.
import os


def vsock(readable, src_cid=3, dst_cid=2, src_port=1000, dst_port=52, length=0, type_=1, op=1,
          flags=0, buf_alloc=65536, fwd_cnt=0):
    return struct.pack('<I', readable) + struct.pack(
        '<QQIIIHHIII', src_cid, dst_cid, src_port, dst_port, length, type_, op, flags,
        buf_alloc, fwd_cnt)


os.makedirs('corpus/vsock_packet', exist_ok=True)
put('corpus/vsock_packet/request', vsock(44))
put('corpus/vsock_packet/rw_4_bytes', vsock(48, op=5, length=4) + b'ping')
put('corpus/vsock_packet/rw_past_chain', vsock(48, op=5, length=5))
put('corpus/vsock_packet/shutdown_both', vsock(44, op=4, flags=3))
put('corpus/vsock_packet/credit_lie', vsock(44, op=6, fwd_cnt=0xffffffff, buf_alloc=0xffffffff))
put('corpus/vsock_packet/wrong_dst_cid', vsock(44, dst_cid=3))
put('corpus/vsock_packet/seqpacket', vsock(44, type_=2))
put('corpus/vsock_packet/unknown_op', vsock(44, op=8))
put('corpus/vsock_packet/oversized', vsock(0xffffffff, op=5, length=0x10001))

# vsock_muxer: steps of one opcode byte and their bytes (see the target's doc comment).


def pkt(op, ports, flags=0, buf_alloc=65536, fwd_cnt=0, data=None):
    step = bytes([0, op, ports, flags]) + struct.pack('<II', buf_alloc, fwd_cnt)
    if op == 5:
        n = len(data or b'') // 512
        step += bytes([n]) + (data or b'')[:n * 512]
    return step


ACCEPT, EVENTS, RX, HOST = bytes([2]), bytes([3, 3]), bytes([4, 255, 8]), bytes([6, 65, 8])
os.makedirs('corpus/vsock_muxer', exist_ok=True)
# A host client connects to guest port 52, the guest answers, data both ways, guest reset.
put('corpus/vsock_muxer/host_connect_and_data',
    bytes([1, 0]) + ACCEPT + EVENTS + RX + pkt(2, 0x20) + EVENTS + HOST + EVENTS + RX
    + pkt(5, 0x20, data=b'x' * 1024) + pkt(7, 0x20) + RX + pkt(3, 0x20))
# The guest connects to the host listener on 52, sends, half-closes, the host closes.
put('corpus/vsock_muxer/guest_connect_and_close',
    pkt(1, 0x01) + RX + HOST + EVENTS + RX + pkt(5, 0x01, data=b'y' * 2048)
    + pkt(4, 0x01, flags=2) + bytes([7, 1]) + EVENTS + RX + bytes([5, 200]) + RX)
# Silent host clients, more than the cap, then time passes.
put('corpus/vsock_muxer/silent_clients',
    bytes([1, 2]) * 20 + ACCEPT + EVENTS + pkt(1, 0x01) + RX + bytes([5, 150]) + RX)
# Credit near the u32 wrap, a lie, a policy patch and a device reset.
put('corpus/vsock_muxer/credit_wrap_and_reset',
    pkt(1, 0x01, buf_alloc=0xffffffff, fwd_cnt=0xfffffff0) + RX + pkt(6, 0x01, fwd_cnt=5)
    + pkt(1, 0x05) + bytes([8, 1]) + pkt(1, 0x09) + RX + bytes([9]) + RX)


# firewall_state: a mode byte, then a postcard FirewallState (palisade_firewall::snapshot).
def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7f
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def vec(items):
    return varint(len(items)) + b''.join(items)


def flow(guest, remote, gport, rport, proto, origin, state, idle):
    return (varint(guest) + varint(remote) + varint(gport) + varint(rport) + bytes([proto, 0, origin, state, 0, 0])
            + varint(idle) + varint(idle) + varint(3) + varint(300))


def firewall_state(flows, ingress_rules=1, egress_rules=1, mac=True):
    counters = (varint(5) + varint(7) + varint(500) + varint(700)
                + vec([varint(1)] * 11) + vec([varint(0)] * 11) + varint(len(flows)) + varint(0) + varint(0))
    return (varint(4) + b'eth0'
            + ((b'\x01' + bytes([6, 0, 10, 0, 0, 2])) if mac else b'\x00')
            + vec([varint(2)] * ingress_rules) + vec([varint(3)] * egress_rules)
            + counters + varint(0) + varint(0) + varint(0) + vec(flows))


import os
os.makedirs('corpus/firewall_state', exist_ok=True)
GUEST, HOST = 0x0a000002, 0x0a000001
put('corpus/firewall_state/udp_replied', b'\x01' + firewall_state([flow(GUEST, HOST, 40000, 53, 17, 1, 5, 1000)]))
put('corpus/firewall_state/tcp_in_and_udp_out', b'\x01' + firewall_state(
    [flow(GUEST, 0xcb007109, 22, 50000, 6, 0, 1, 10), flow(GUEST, HOST, 40001, 53, 17, 1, 4, 10)]))
put('corpus/firewall_state/open_table', b'\x04' + firewall_state(
    [flow(GUEST, HOST, p, 80, 6, 1, 0, 5) for p in range(8)], ingress_rules=0, egress_rules=0, mac=False))


# balloon_queues: amount_mib (mod 2), the optional queues the driver accepts (bit 0
# statistics, 1 hinting, 2 reporting; 0x80 acknowledge_on_stop, 0x40 stop after the first
# round), then guest memory (low region; the high region starts at 0xc0000 past a hole): five
# rings at 0x1000 apart, descriptors at +0, avail at +0x100, used at +0x200 (inflate 0, deflate
# 0x1000, then the accepted optional queues in order); arrays and buffers from 0x5000.
def balloon_seed(inflate, deflate, stats, hints=(), accepted=0x07):
    mem = bytearray(0x6000)

    def ring(base, buffers):
        for i, buffer in enumerate(buffers):
            addr, length, flags = buffer if len(buffer) == 3 else (*buffer, 0)
            struct.pack_into('<QIHH', mem, base + 16 * i, addr, length, flags, 0)
            struct.pack_into('<H', mem, base + 0x104 + 2 * i, i)
        struct.pack_into('<HH', mem, base + 0x100, 0, len(buffers))

    def array(addr, values, fmt):
        data = b''.join(struct.pack(fmt, *v) if isinstance(v, tuple) else struct.pack(fmt, v) for v in values)
        mem[addr:addr + len(data)] = data
        return (addr, len(data))

    ring(0, [array(0x5000, inflate, '<I')] if inflate else [])
    ring(0x1000, [array(0x5800, deflate, '<I')] if deflate else [])
    ring(0x2000, [array(0x5c00, stats, '<HQ')] if stats else [])
    # Hinting (queue 3 when statistics are accepted too): the run's id (2), then hints.
    ring(0x3000, [array(0x5e00, [2], '<I')] + list(hints) if hints else [])
    return bytes([0x01, accepted]) + bytes(mem)


os.makedirs('corpus/balloon_queues', exist_ok=True)
put('corpus/balloon_queues/inflate_deflate_stats',
    balloon_seed([0x10, 0x11, 0x11, 0xffff], [0x10, 0x20], [(4, 1000), (5, 4096)]))
put('corpus/balloon_queues/past_ram_and_gap', balloon_seed([0x100, 0xd0000, 0xffffffff], [], []))
put('corpus/balloon_queues/hint_run_high_region_hole_and_unaligned',
    balloon_seed([], [], [(4, 1)],
                 [(0xc0000, 0x2000, 2), (0x80000, 0x1000, 2), (0xc0800, 0x1000, 2), (0x5f00, 8, 0)],
                 accepted=0x87))
put('corpus/balloon_queues/reporting_without_statistics',
    balloon_seed([0x10], [], [], accepted=0x04))


# net_rx_mergeable: mode (bit 0: hostile layout, bit 1: EVENT_IDX), frame count (mod 5) and
# each frame's length (u16 LE, 14 + n % 6000); then, checked layout: per chain its descriptor
# count (1 + b % 3) and per descriptor its length (u16 LE) and a writable byte (0 = readable),
# then per chain when it is posted (0 first round, 1 second, 2 never).
def rx_seed(mode, frame_lens, chains, posts):
    out = bytes([mode, len(frame_lens)])
    for n in frame_lens:
        out += struct.pack('<H', n - 14)
    for descs in chains:
        out += bytes([len(descs) - 1])
        for length, writable in descs:
            out += struct.pack('<H', length) + bytes([1 if writable else 0])
    return out + bytes(posts)


os.makedirs('corpus/net_rx_mergeable', exist_ok=True)
# Sixteen 1-descriptor chains of 1526 bytes: a 4000-byte frame takes three.
put('corpus/net_rx_mergeable/three_frames_over_many_buffers',
    rx_seed(0, [4000, 60, 1514], [[(1526, True)]] * 16, [0] * 16))
# Too few buffers in the first round (the frame waits), the rest in the second; EVENT_IDX.
put('corpus/net_rx_mergeable/waits_for_buffers',
    rx_seed(2, [5000], [[(1000, True), (200, True)]] * 8, [0, 0, 1, 1, 1, 1, 1, 1]))
# A readable chain and a 12-byte chain in the middle of a frame, header-only buffers.
put('corpus/net_rx_mergeable/refused_and_header_only_chains',
    rx_seed(0, [3000, 100], [[(12, True)], [(800, False)], [(12, True), (4096, True)]]
            + [[(700, True)]] * 12, [0] * 15))
put('corpus/net_rx_mergeable/hostile_rings', bytes([1, 2, 0x10, 0, 0x10, 0]) + bytes(range(256)) * 8)
