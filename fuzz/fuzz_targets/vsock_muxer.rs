//! The vsock connection table driven by a hostile guest and misbehaving host clients, without
//! KVM or queues: checked guest packets with any ports, credit and flags; host clients that
//! connect, write any line, go silent or close; host listeners that accept, write and close;
//! RX buffers of any size; time jumps; policy patches; device resets. Never panics, and
//! after every step: connections within `max_connections`, host clients in their handshake
//! within their pool, buffered guest data within each connection's buffer, and every packet
//! to the guest addressed from the host to the guest and no longer than the buffer it got.
//!
//! Input: a sequence of steps, each one opcode byte and the bytes it reads.

#![no_main]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use palisade::devices::virtio::vsock::config::{PortRange, VsockDeviceConfig, VsockPolicy};
use palisade::devices::virtio::vsock::connection::CONN_BUF_SIZE;
use palisade::devices::virtio::vsock::listener::bind_listener;
use palisade::devices::virtio::vsock::muxer::{Muxer, MAX_HANDSHAKES};
use palisade::devices::virtio::vsock::packet::{Header, Op, MAX_PKT_LEN, TYPE_STREAM};
use palisade::metrics::VsockDeviceMetrics;

const GUEST_CID: u64 = 3;
const MAX_CONNS: u32 = 4;
/// Host sockets the input may hold open at once (both kinds).
const MAX_HOST_SOCKETS: usize = 32;
/// The host port a listener waits on (guest-initiated connections succeed there).
const LISTENED_PORT: u32 = 52;
/// Host ports the device gives host-initiated connections start here.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.0.get(..4)?;
        let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        self.0 = &self.0[4..];
        Some(v)
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b
    }
}

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("palisade-vsock-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    })
}

fn policy(open: bool) -> VsockPolicy {
    VsockPolicy {
        host_initiated: (!open).then(|| vec![PortRange { first: 0, last: 53 }]),
        guest_initiated: (!open).then(Vec::new),
        max_connections: Some(MAX_CONNS),
        ..VsockPolicy::default()
    }
}

fn port(sel: u8) -> u32 {
    match sel % 4 {
        0 => LISTENED_PORT,
        1 => 50 + u32::from(sel >> 2) % 8,
        2 => FIRST_LOCAL_PORT + u32::from(sel >> 2) % 8,
        _ => u32::MAX - u32::from(sel >> 2),
    }
}

fn check(muxer: &Muxer) {
    assert!(muxer.open_peers() <= MAX_CONNS as usize + MAX_HANDSHAKES);
    // Each connection: at most its buffer of guest data and the `OK <port>\n` line.
    assert!(muxer.buffered_bytes() <= muxer.open_peers() * (CONN_BUF_SIZE as usize + 32));
}

fuzz_target!(|data: &[u8]| {
    let uds = dir().join("v.sock");
    let config = VsockDeviceConfig {
        vsock_id: None,
        guest_cid: GUEST_CID as u32,
        uds_path: uds.to_string_lossy().into_owned(),
        policy: Some(policy(true)),
    };
    let Ok(listener) = bind_listener(&uds) else {
        return;
    };
    let _ = std::fs::remove_file(config.guest_initiated_path(LISTENED_PORT));
    let Ok(host_listener) = UnixListener::bind(config.guest_initiated_path(LISTENED_PORT)) else {
        return;
    };
    let _ = host_listener.set_nonblocking(true);
    let mut muxer = Muxer::new(&config, listener, Arc::new(VsockDeviceMetrics::new()));
    let mut clients: Vec<UnixStream> = Vec::new();
    let mut accepted: Vec<UnixStream> = Vec::new();
    let mut buf = vec![0u8; MAX_PKT_LEN as usize];
    let start = Instant::now();
    let mut input = Input(data);
    while let Some(step) = input.byte() {
        match step % 10 {
            0 => {
                let (Some(op), Some(ports), Some(flags)) =
                    (input.byte(), input.byte(), input.byte())
                else {
                    break;
                };
                let Some(op) = Op::from_wire(u16::from(op % 8)) else {
                    continue;
                };
                let (Some(buf_alloc), Some(fwd_cnt)) = (input.u32(), input.u32()) else {
                    break;
                };
                let len = if op == Op::Rw {
                    usize::from(input.byte().unwrap_or(0)) * 512
                } else {
                    0
                };
                let payload = input.bytes(len).to_vec();
                let hdr = Header {
                    src_cid: GUEST_CID,
                    dst_cid: 2,
                    src_port: port(ports & 0x0f),
                    dst_port: port(ports >> 4),
                    len: payload.len() as u32,
                    type_: TYPE_STREAM,
                    op: op as u16,
                    flags: u32::from(flags),
                    buf_alloc,
                    fwd_cnt,
                };
                muxer.on_guest_packet(&hdr, op, &payload);
            }
            1 if clients.len() + accepted.len() < MAX_HOST_SOCKETS => {
                let line_kind = input.byte().unwrap_or(0);
                let Ok(mut c) = UnixStream::connect(&uds) else {
                    continue;
                };
                let _ = c.set_nonblocking(true);
                let line = match line_kind % 4 {
                    0 => format!("CONNECT {}\n", port(line_kind >> 2)).into_bytes(),
                    1 => b"CONNECT 52".to_vec(),
                    2 => Vec::new(),
                    _ => input.bytes(40).to_vec(),
                };
                let _ = c.write_all(&line);
                clients.push(c);
            }
            2 => muxer.accept(),
            3 => {
                let flags = input.byte().unwrap_or(0);
                for token in muxer.tokens() {
                    muxer.on_peer_event(token, flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
                }
            }
            4 => {
                let room = usize::from(input.byte().unwrap_or(0)) * 257;
                for _ in 0..input.byte().unwrap_or(1) % 32 {
                    let Some(hdr) = muxer.next_rx(&mut buf[..room]) else {
                        break;
                    };
                    assert_eq!((hdr.src_cid, hdr.dst_cid), (2, GUEST_CID));
                    assert!(hdr.len as usize <= room);
                    assert!(hdr.len == 0 || hdr.op == Op::Rw as u16);
                }
            }
            5 => {
                let later = Duration::from_millis(u64::from(input.byte().unwrap_or(0)) * 20);
                muxer.sweep(start + later);
            }
            6 => {
                while accepted.len() + clients.len() < MAX_HOST_SOCKETS {
                    let Ok((s, _)) = host_listener.accept() else {
                        break;
                    };
                    let _ = s.set_nonblocking(true);
                    accepted.push(s);
                }
                let what = input.byte().unwrap_or(0);
                let n = usize::from(input.byte().unwrap_or(0)) * 64;
                let bytes = vec![what; n];
                for s in accepted.iter_mut().chain(clients.iter_mut()) {
                    let _ = s.write(&bytes);
                }
            }
            7 => {
                let which = usize::from(input.byte().unwrap_or(0));
                if which % 2 == 0 && !clients.is_empty() {
                    clients.swap_remove(which / 2 % clients.len());
                } else if !accepted.is_empty() {
                    accepted.swap_remove(which / 2 % accepted.len());
                }
            }
            8 => muxer.update_policy(policy(input.byte().unwrap_or(0) % 2 == 0)),
            9 => muxer.end_all(),
            _ => {}
        }
        // What the event loop does after every event.
        muxer.removed.clear();
        muxer.added.clear();
        check(&muxer);
    }
});
