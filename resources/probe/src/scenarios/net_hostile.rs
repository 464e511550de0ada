//! `net-hostile`: frames the guest transmits to trick the host after the firewall judged
//! them: virtio-net header offload tricks (NEEDS_CSUM aimed at the UDP port or the IP source,
//! a GSO type never offered, gso_size 1, the receive-only DATA_VALID flag), an oversized
//! chain (70 KiB), a runt, an IPv4 header claiming more than the frame, IPv4 with a loose
//! source route option, IPv6 with a routing header, tiny overlapping fragments; then an honest
//! frame. VIRTIO_NET_F_CSUM and HOST_TSO4 are negotiated so that only the frame decides.
//! Every UDP frame goes to 10.0.0.1 port 7100+case with payload `hostile-CASE` so the host,
//! capturing on the tap, can tell which arrived and check their port and address bytes.
//! `probe: net-hostile ok sent=N` (the verdicts are the host's).

use crate::netstack::{checksum, eth, fail, ipv4, udp, Session, ETH, ETH_IPV4, ETH_IPV6, IP, PROTO_UDP, UDP, tcp_syn};
use crate::serial::ResultLine;
use crate::virtio::dma::{self, DATA_START};
use crate::virtio::net::{Net, HDR};
use crate::virtio::{self, DEVICE_ID_NET};
use crate::zero_page::BootInfo;

pub const NAME: &str = "net-hostile";
const F_CSUM: u64 = 1;
const F_HOST_TSO4: u64 = 1 << 11;
/// Where hostile frames are built (header first); the Net rings and buffers sit below.
const FRAME: u64 = DATA_START + 0x10_0000;
const OVERSIZED: usize = 70 * 1024;

/// flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
fn hdr(flags: u8, gso: u8, gso_size: u16, start: u16, offset: u16) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    h[0] = flags;
    h[1] = gso;
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&start.to_le_bytes());
    h[8..10].copy_from_slice(&offset.to_le_bytes());
    h
}

/// The frame buffer, zeroed.
fn frame_buf(len: usize) -> &'static mut [u8] {
    dma::zero(FRAME, (HDR + len) as u64);
    frame_mut(len)
}

/// The frame buffer as it is.
fn frame_mut(len: usize) -> &'static mut [u8] {
    // SAFETY: FRAME.. lies in the DMA window, unused by Net (its rings, buffers and scratch are below
    // DATA_START + 0x5_1000) and free until the device took the previous frame (send_at waits).
    unsafe { core::slice::from_raw_parts_mut((FRAME + HDR as u64) as *mut u8, len) }
}

struct Ctx {
    mac: [u8; 6],
    peer_mac: [u8; 6],
    ip: [u8; 4],
    peer: [u8; 4],
}

/// A UDP frame for case `n` in the frame buffer; returns its length.
fn udp_case(c: &Ctx, n: u16, name: &str) -> usize {
    let buf = frame_buf(ETH + IP + UDP + 32);
    eth(buf, c.peer_mac, c.mac, ETH_IPV4);
    let p = ETH + IP + UDP;
    buf[p..p + 8].copy_from_slice(b"hostile-");
    buf[p + 8..p + 8 + name.len()].copy_from_slice(name.as_bytes());
    udp(buf, (c.ip, 40000), (c.peer, 7100 + n), 8 + name.len())
}

fn send(net: &mut Net, h: [u8; HDR], len: usize) {
    dma::write_bytes(FRAME, &h);
    net.send_at(FRAME, (HDR + len) as u32);
}

/// The cases, in order; each sends one frame.
const CASES: &[&str] = &[
    "csum-at-port", "csum-at-ip-src", "csum-honest", "gso-udp-unoffered", "gso-size-1",
    "data-valid", "oversized", "runt", "ip-len-lies", "ipv4-source-route", "ipv6-routing-header",
    "tiny-fragments", "honest",
];

fn send_case(net: &mut Net, c: &Ctx, n: u16, name: &str) {
    let plain = hdr(0, 0, 0, 0, 0);
    let l4 = (ETH + IP) as u16;
    match name {
        "csum-at-port" => { let len = udp_case(c, n, name); send(net, hdr(1, 0, 0, l4, 2), len) }
        "csum-at-ip-src" => { let len = udp_case(c, n, name); send(net, hdr(1, 0, 0, ETH as u16 + 12, 0), len) }
        "csum-honest" => { let len = udp_case(c, n, name); send(net, hdr(1, 0, 0, l4, 6), len) }
        "gso-udp-unoffered" => { let len = udp_case(c, n, name); send(net, hdr(1, 3, 1400, l4, 6), len) }
        "gso-size-1" => {
            // A TCP segment with TSO4 and a one-byte MSS.
            let buf = frame_buf(ETH + IP + 20);
            eth(buf, c.peer_mac, c.mac, ETH_IPV4);
            let len = tcp_syn(buf, (c.ip, 40000), (c.peer, 7100 + n), 1);
            send(net, hdr(1, 1, 1, l4, 16), len)
        }
        "data-valid" => { let len = udp_case(c, n, name); send(net, hdr(2, 0, 0, 0, 0), len) }
        "oversized" => {
            let len = udp_case(c, n, name);
            let _ = len;
            send(net, plain, OVERSIZED)
        }
        "runt" => { frame_buf(10); send(net, plain, 10) }
        "ip-len-lies" => {
            let len = udp_case(c, n, name);
            let buf = frame_mut(len);
            buf[ETH + 2..ETH + 4].copy_from_slice(&1000u16.to_be_bytes());
            send(net, plain, len)
        }
        "ipv4-source-route" => send(net, plain, source_routed(c, n, name)),
        "ipv6-routing-header" => send(net, plain, ipv6_routed(c, n, name)),
        "tiny-fragments" => {
            // Offset 0 with only the UDP ports (8 bytes, more fragments), then an overlapping
            // fragment at offset 0 again with other ports.
            for dst in [7100 + n, 22] {
                let len = udp_case(c, n, name);
                let buf = frame_mut(len);
                buf[ETH + IP + 2..ETH + IP + 4].copy_from_slice(&dst.to_be_bytes());
                let flen = ipv4(buf, c.ip, c.peer, PROTO_UDP, 8);
                buf[ETH + 6] = 0x20; // MF, offset 0
                buf[ETH + 10..ETH + 12].fill(0);
                let sum = checksum(&buf[ETH..ETH + IP], 0);
                buf[ETH + 10..ETH + 12].copy_from_slice(&sum.to_be_bytes());
                send(net, plain, flen);
            }
        }
        _ => { let len = udp_case(c, n, name); send(net, plain, len) }
    }
}

/// IPv4 with a loose source route option (type 131) through 10.0.0.1, then UDP.
fn source_routed(c: &Ctx, n: u16, name: &str) -> usize {
    let plain_len = udp_case(c, n, name);
    let buf = frame_mut(plain_len + 8);
    // The UDP part moves 8 bytes down to make room for the option.
    buf.copy_within(ETH + IP..plain_len, ETH + IP + 8);
    buf[ETH + IP..ETH + IP + 8].copy_from_slice(&[131, 7, 4, 10, 0, 0, 1, 0]);
    let total = (plain_len + 8 - ETH) as u16;
    buf[ETH] = 0x47;
    buf[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
    buf[ETH + 10..ETH + 12].fill(0);
    let sum = checksum(&buf[ETH..ETH + IP + 8], 0);
    buf[ETH + 10..ETH + 12].copy_from_slice(&sum.to_be_bytes());
    plain_len + 8
}

/// IPv6 fd00::2 -> fd00::1 with a type-0 routing header, then UDP to 7100+n.
fn ipv6_routed(c: &Ctx, n: u16, name: &str) -> usize {
    let payload = 8 + name.len();
    let udp_len = UDP + payload;
    let rh = 24; // routing header with one address
    let buf = frame_buf(ETH + 40 + rh + udp_len);
    eth(buf, c.peer_mac, c.mac, ETH_IPV6);
    let ip6 = &mut buf[ETH..];
    ip6[0] = 0x60;
    ip6[4..6].copy_from_slice(&((rh + udp_len) as u16).to_be_bytes());
    ip6[6] = 43;
    ip6[7] = 64;
    ip6[8] = 0xfd;
    ip6[23] = 2;
    ip6[24] = 0xfd;
    ip6[39] = 1;
    let r = &mut ip6[40..40 + rh];
    r[0] = PROTO_UDP;
    r[1] = 2; // (24 / 8) - 1
    r[2] = 0; // type 0
    r[3] = 1; // segments left
    r[8] = 0xfd;
    r[23] = 3;
    let u = &mut ip6[40 + rh..40 + rh + udp_len];
    u[0..2].copy_from_slice(&40000u16.to_be_bytes());
    u[2..4].copy_from_slice(&(7100 + n).to_be_bytes());
    u[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    u[8..16].copy_from_slice(b"hostile-");
    u[16..16 + name.len()].copy_from_slice(name.as_bytes());
    ETH + 40 + rh + udp_len
}

pub fn run(boot: &BootInfo) {
    let Some(dev) = virtio::find(boot, DEVICE_ID_NET) else {
        return fail(NAME, "no-virtio-net-device");
    };
    // The session resolves the peer; then the device is brought up again with offloads.
    let s = match Session::open(boot) {
        Ok(s) => s,
        Err(e) => return fail(NAME, e),
    };
    let c = Ctx { mac: s.net.mac, peer_mac: s.peer_mac, ip: s.params.ip, peer: s.params.peer };
    let mut net = match Net::open_with(dev, F_CSUM | F_HOST_TSO4) {
        Ok(net) => net,
        Err(e) => return fail(NAME, e.as_str()),
    };
    for (n, name) in CASES.iter().enumerate() {
        send_case(&mut net, &c, n as u16, name);
    }
    net.drain_tx();
    ResultLine::ok(NAME.as_bytes()).dec("sent", CASES.len() as u64).end();
}
