//! The device against mock queues and real Unix sockets in a temporary directory.

#![allow(clippy::unwrap_used)]

mod traffic;
mod transport_reset;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;

use super::config::{PortRange, VsockDeviceConfig, VsockPolicy};
use super::connection::CONN_BUF_SIZE;
use super::event_handler::peer_event;
use super::muxer::Watch;
use super::packet::{Header, Op, HDR_LEN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;
use crate::devices::virtio::{ActivateContext, VirtioDevice};
use crate::vstate::memory::GuestMemory;

const CID: u64 = 3;
const QSIZE: u16 = 256;
const SLOT: u64 = 0x1_1000;
/// How long a test waits for the host side before it fails.
const DEADLINE: Duration = Duration::from_secs(5);

/// The driver's side of one queue: descriptors and buffers per slot, used entries read back.
struct Driver<'a> {
    q: MockSplitQueue<'a, GuestMemory>,
    /// Our own used ring: the mock puts its used ring inside the avail ring of a 256-entry
    /// queue.
    used: GuestAddress,
    buffers: u64,
    added: u16,
    used_seen: u16,
}

impl Driver<'_> {
    fn add(&mut self, mem: &GuestMemory, data: Option<&[u8]>, len: u32) -> u64 {
        let slot = self.added % QSIZE;
        let addr = self.buffers + u64::from(slot) * SLOT;
        let flags = match data {
            Some(d) => {
                mem.write_slice(d, GuestAddress(addr)).unwrap();
                0
            }
            None => VRING_DESC_F_WRITE as u16,
        };
        let desc = RawDescriptor::from(Descriptor::new(addr, len, flags, 0));
        self.q.desc_table().store(slot, desc).unwrap();
        let avail = self.q.avail_addr();
        let idx: u16 = mem.read_obj(avail.unchecked_add(2)).unwrap();
        mem.write_obj(slot, avail.unchecked_add(4 + 2 * u64::from(idx % QSIZE)))
            .unwrap();
        mem.write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
        self.added = self.added.wrapping_add(1);
        addr
    }

    fn take_used(&mut self, mem: &GuestMemory) -> Vec<(u64, u32)> {
        let used = self.used;
        let idx: u16 = mem.read_obj(used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = used.unchecked_add(4 + 8 * u64::from(self.used_seen % QSIZE));
            let id: u32 = mem.read_obj(at).unwrap();
            let len: u32 = mem.read_obj(at.unchecked_add(4)).unwrap();
            out.push((self.buffers + u64::from(id) * SLOT, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    fn outstanding(&self) -> u16 {
        self.added.wrapping_sub(self.used_seen)
    }
}

struct Rig<'a> {
    dev: Vsock,
    mem: &'a GuestMemory,
    rx: Driver<'a>,
    tx: Driver<'a>,
    ev: Driver<'a>,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 0x300_0000)]).unwrap()
}

fn rig(mem: &GuestMemory, policy: Option<VsockPolicy>) -> Rig<'_> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let config = VsockDeviceConfig {
        vsock_id: None,
        guest_cid: CID as u32,
        uds_path: path.to_str().unwrap().into(),
        policy,
    };
    let mut dev = Vsock::new(&config, Arc::new(VsockDeviceMetrics::new())).unwrap();
    let rx = MockSplitQueue::create(mem, GuestAddress(0), QSIZE);
    let tx = MockSplitQueue::create(mem, GuestAddress(0x1_0000), QSIZE);
    let ev = MockSplitQueue::create(mem, GuestAddress(0x2_0000), QSIZE);
    let queue = |q: &MockSplitQueue<GuestMemory>, base: u64| {
        let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(base + 0x8000))
            .unwrap();
        queue
    };
    dev.activate(ActivateContext {
        mem: mem.clone(),
        queues: vec![queue(&rx, 0), queue(&tx, 0x1_0000), queue(&ev, 0x2_0000)],
        features: dev.avail_features(),
    })
    .unwrap();
    let driver = |q, base: u64, buffers| Driver {
        q,
        used: GuestAddress(base + 0x8000),
        buffers,
        added: 0,
        used_seen: 0,
    };
    Rig {
        dev,
        mem,
        rx: driver(rx, 0, 0x10_0000),
        tx: driver(tx, 0x1_0000, 0x130_0000),
        ev: driver(ev, 0x2_0000, 0x250_0000),
        _dir: dir,
        path,
    }
}

fn guest_hdr(op: Op, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: 2,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op: op as u16,
        buf_alloc: 256 * 1024,
        ..Header::default()
    }
}

impl Rig<'_> {
    fn send_raw(&mut self, bytes: &[u8]) {
        self.tx.add(self.mem, Some(bytes), bytes.len() as u32);
        self.dev.process_tx();
        self.dev.forget_watches();
        assert_eq!(
            self.tx.take_used(self.mem).len(),
            1,
            "every TX chain is used"
        );
    }

    fn send(&mut self, mut hdr: Header, data: &[u8]) {
        hdr.len = data.len() as u32;
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(data);
        self.send_raw(&bytes);
    }

    /// Tops the RX queue up to 16 buffers and returns what the device delivered.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        while self.rx.outstanding() < 16 {
            self.rx
                .add(self.mem, None, (HDR_LEN as u32) + packet::MAX_PKT_LEN);
        }
        self.dev.process_rx();
        self.rx
            .take_used(self.mem)
            .into_iter()
            .map(|(addr, len)| {
                let mut raw = [0u8; HDR_LEN];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                let hdr = Header::from_bytes(&raw);
                assert_eq!(len as usize, HDR_LEN + hdr.len as usize);
                let mut data = vec![0u8; hdr.len as usize];
                self.mem
                    .read_slice(&mut data, GuestAddress(addr + HDR_LEN as u64))
                    .unwrap();
                (hdr, data)
            })
            .collect()
    }

    /// What the event loop does when host sockets are ready: accept, then every socket.
    fn host_ready(&mut self) {
        self.dev.muxer.accept();
        for token in self.dev.muxer.tokens() {
            let data = peer_event(token, Watch::Stream);
            self.dev.on_peer_event(data, EventSet::IN | EventSet::OUT);
        }
        self.dev.forget_watches();
    }

    fn metrics(&self) -> &VsockDeviceMetrics {
        &self.dev.metrics
    }
}

fn client(path: &std::path::Path) -> UnixStream {
    let c = UnixStream::connect(path).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c
}

fn read_exactly(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

/// True when the host end sees end of file, or a reset when we closed with its bytes unread
/// (within the deadline).
fn sees_eof(stream: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    match stream.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

fn ops(packets: &[(Header, Vec<u8>)]) -> Vec<u16> {
    packets.iter().map(|(h, _)| h.op).collect()
}

/// A guest-initiated connection from guest port 1000 to host port 52, accepted by a host
/// listener at `<uds_path>_52`.
fn guest_connection(r: &mut Rig<'_>) -> (UnixListener, UnixStream) {
    let listener = UnixListener::bind(format!("{}_52", r.path.display())).unwrap();
    r.send(guest_hdr(Op::Request, 1000, 52), &[]);
    let got = r.recv();
    assert_eq!(ops(&got), vec![Op::Response as u16]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (52, 1000));
    let (host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(DEADLINE)).unwrap();
    (listener, host)
}

#[test]
fn the_device_is_vsock_with_three_queues_and_its_cid_in_config_space() {
    let mem = memory();
    let r = rig(&mem, None);
    assert_eq!(r.dev.device_type(), 19);
    assert_eq!(r.dev.queue_max_sizes().len(), 3);
    let mut data = [0u8; 8];
    r.dev.read_config(0, &mut data);
    assert_eq!(u64::from_le_bytes(data), CID);
}

#[test]
fn a_host_client_connects_to_a_guest_port_and_data_flows_both_ways() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let mut c = client(&r.path);
    c.write_all(b"CONNECT 52\n").unwrap();
    r.host_ready();
    let got = r.recv();
    assert_eq!(ops(&got), vec![Op::Request as u16]);
    let req = got[0].0;
    assert_eq!((req.src_cid, req.dst_cid, req.dst_port), (2, CID, 52));
    assert_eq!(req.buf_alloc, CONN_BUF_SIZE);
    let local = req.src_port;
    r.send(guest_hdr(Op::Response, 52, local), &[]);
    let ok = format!("OK {local}\n");
    assert_eq!(read_exactly(&mut c, ok.len()), ok.as_bytes());
    c.write_all(b"ping").unwrap();
    r.host_ready();
    let got = r.recv();
    assert_eq!(ops(&got), vec![Op::Rw as u16]);
    assert_eq!(got[0].1, b"ping");
    r.send(guest_hdr(Op::Rw, 52, local), b"pong");
    assert_eq!(read_exactly(&mut c, 4), b"pong");
    assert_eq!(r.metrics().conns_opened_host.count(), 1);
    assert_eq!(r.metrics().rx_bytes_count.count(), 4);
    assert_eq!(r.metrics().tx_bytes_count.count(), 4);
    // The guest resets: the host client sees end of file.
    r.send(guest_hdr(Op::Rst, 52, local), &[]);
    assert!(sees_eof(&mut c));
    r.dev.forget_watches();
    assert_eq!(r.dev.muxer.open_peers(), 0);
    assert_eq!(r.metrics().conns_reset_by_guest.count(), 1);
}

#[test]
fn a_guest_rst_to_a_host_connect_closes_the_client_and_no_answer_times_out() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let mut c1 = client(&r.path);
    c1.write_all(b"CONNECT 7\n").unwrap();
    r.host_ready();
    let local = r.recv()[0].0.src_port;
    r.send(guest_hdr(Op::Rst, 7, local), &[]);
    assert!(sees_eof(&mut c1));
    assert_eq!(r.metrics().refused_by_guest.count(), 1);

    let mut c2 = client(&r.path);
    c2.write_all(b"CONNECT 8\n").unwrap();
    r.host_ready();
    let local = r.recv()[0].0.src_port;
    r.dev.sweep(Instant::now() + muxer::CONNECT_TIMEOUT);
    r.dev.forget_watches();
    assert!(sees_eof(&mut c2));
    let got = r.recv();
    assert_eq!(ops(&got), vec![Op::Rst as u16]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (local, 8));
}

#[test]
fn garbage_instead_of_a_connect_line_closes_the_host_client() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let mut c = client(&r.path);
    c.write_all(&[b'A'; 100]).unwrap();
    r.host_ready();
    assert!(sees_eof(&mut c));
    assert_eq!(r.metrics().refused_bad_handshake.count(), 1);
    assert!(r.recv().is_empty(), "the guest hears nothing of it");
}

#[test]
fn a_guest_connects_to_a_host_listener_and_a_host_close_is_a_shutdown() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let (_listener, mut host) = guest_connection(&mut r);
    r.send(guest_hdr(Op::Rw, 1000, 52), b"hello");
    assert_eq!(read_exactly(&mut host, 5), b"hello");
    host.write_all(b"world").unwrap();
    r.host_ready();
    let got = r.recv();
    assert_eq!(got[0].1, b"world");
    drop(host);
    r.host_ready();
    let got = r.recv();
    assert_eq!(ops(&got), vec![Op::Shutdown as u16]);
    assert_eq!(got[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    r.send(guest_hdr(Op::Rst, 1000, 52), &[]);
    r.dev.forget_watches();
    assert_eq!(r.dev.muxer.open_peers(), 0);
    assert_eq!(r.metrics().conns_opened_guest.count(), 1);
    assert_eq!(r.metrics().conns_closed.count(), 1);
}

#[test]
fn a_guest_that_half_closes_leaves_the_host_reading_end_of_file_and_answering() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let (_listener, mut host) = guest_connection(&mut r);
    r.send(guest_hdr(Op::Rw, 1000, 52), b"request");
    let mut done = guest_hdr(Op::Shutdown, 1000, 52);
    done.flags = SHUTDOWN_SEND;
    r.send(done, &[]);
    assert_eq!(read_exactly(&mut host, 7), b"request");
    assert!(sees_eof(&mut host));
    host.write_all(b"answer").unwrap();
    r.host_ready();
    assert_eq!(r.recv()[0].1, b"answer");
}

#[test]
fn a_guest_that_never_answers_a_host_close_is_reset_after_the_timeout() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let (_listener, host) = guest_connection(&mut r);
    drop(host);
    r.host_ready();
    assert_eq!(ops(&r.recv()), vec![Op::Shutdown as u16]);
    r.dev.sweep(Instant::now() + muxer::CLOSE_TIMEOUT);
    assert_eq!(ops(&r.recv()), vec![Op::Rst as u16]);
    r.dev.forget_watches();
    assert_eq!(r.dev.muxer.open_peers(), 0);
}

#[test]
fn a_guest_shutdown_both_ways_ends_the_connection_after_its_data() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let (_listener, mut host) = guest_connection(&mut r);
    r.send(guest_hdr(Op::Rw, 1000, 52), b"last words");
    let mut bye = guest_hdr(Op::Shutdown, 1000, 52);
    bye.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    r.send(bye, &[]);
    assert_eq!(read_exactly(&mut host, 10), b"last words");
    assert!(sees_eof(&mut host));
    assert_eq!(ops(&r.recv()), vec![Op::Rst as u16]);
}

#[test]
fn a_guest_connect_without_a_listener_gets_an_rst() {
    let mem = memory();
    let mut r = rig(&mem, None);
    r.send(guest_hdr(Op::Request, 1000, 99), &[]);
    let got = r.recv();
    assert_eq!(ops(&got), vec![Op::Rst as u16]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (99, 1000));
    assert_eq!(r.metrics().refused_no_listener.count(), 1);
}

#[test]
fn the_policy_refuses_ports_both_ways_and_a_patch_opens_them() {
    let mem = memory();
    let policy = VsockPolicy {
        host_initiated: Some(vec![PortRange {
            first: 52,
            last: 52,
        }]),
        guest_initiated: Some(vec![]),
        ..VsockPolicy::default()
    };
    let mut r = rig(&mem, Some(policy));
    let _listener = UnixListener::bind(format!("{}_52", r.path.display())).unwrap();
    r.send(guest_hdr(Op::Request, 1000, 52), &[]);
    assert_eq!(ops(&r.recv()), vec![Op::Rst as u16]);
    let mut c = client(&r.path);
    c.write_all(b"CONNECT 53\n").unwrap();
    r.host_ready();
    assert!(sees_eof(&mut c));
    assert!(r.recv().is_empty());
    assert_eq!(r.metrics().refused_policy_port.count(), 2);

    r.dev.update_policy(VsockPolicy::default()).unwrap();
    r.send(guest_hdr(Op::Request, 1000, 52), &[]);
    assert_eq!(ops(&r.recv()), vec![Op::Response as u16]);
    assert_eq!(r.metrics().update_count.count(), 1);
}

#[test]
fn the_connection_cap_counts_both_directions() {
    let mem = memory();
    let policy = VsockPolicy {
        max_connections: Some(2),
        ..VsockPolicy::default()
    };
    let mut r = rig(&mem, Some(policy));
    let _listener = UnixListener::bind(format!("{}_52", r.path.display())).unwrap();
    r.send(guest_hdr(Op::Request, 1000, 52), &[]);
    let mut host = client(&r.path);
    host.write_all(b"CONNECT 7\n").unwrap();
    r.host_ready();
    r.send(guest_hdr(Op::Request, 1001, 52), &[]);
    let got = r.recv();
    // RSTs go first.
    assert_eq!(
        ops(&got),
        vec![Op::Rst as u16, Op::Response as u16, Op::Request as u16]
    );
    let mut third = client(&r.path);
    third.write_all(b"CONNECT 8\n").unwrap();
    r.host_ready();
    assert!(sees_eof(&mut third));
    assert_eq!(r.metrics().refused_max_connections.count(), 2);
    assert_eq!(r.dev.muxer.open_peers(), 2);
}

#[test]
fn host_clients_silent_in_their_connect_line_never_hold_a_guest_slot_and_time_out() {
    let mem = memory();
    let policy = VsockPolicy {
        max_connections: Some(1),
        ..VsockPolicy::default()
    };
    let mut r = rig(&mem, Some(policy));
    let _listener = UnixListener::bind(format!("{}_52", r.path.display())).unwrap();
    // Stuck local clients: as many as the handshake pool holds, and one more.
    let mut silent: Vec<UnixStream> = (0..=muxer::MAX_HANDSHAKES)
        .map(|_| client(&r.path))
        .collect();
    r.host_ready();
    let mut extra = silent.pop().unwrap();
    assert!(sees_eof(&mut extra), "the pool of handshakes is bounded");
    assert_eq!(r.dev.muxer.open_peers(), muxer::MAX_HANDSHAKES);
    // The guest still gets its one connection.
    r.send(guest_hdr(Op::Request, 1000, 52), &[]);
    assert_eq!(ops(&r.recv()), vec![Op::Response as u16]);
    // A silent client is closed once the CONNECT deadline passed.
    r.dev.sweep(Instant::now() + muxer::CONNECT_TIMEOUT);
    r.dev.forget_watches();
    for c in &mut silent {
        assert!(sees_eof(c));
    }
    assert_eq!(r.dev.muxer.open_peers(), 1);
    assert_eq!(
        r.metrics().refused_bad_handshake.count(),
        muxer::MAX_HANDSHAKES as u64
    );
    assert!(r.recv().is_empty(), "the guest hears nothing of them");
}

#[test]
fn a_guest_that_never_reads_blocks_the_host_client_and_holds_no_host_memory() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let (_listener, host) = guest_connection(&mut r);
    // The guest said it can take 4 KiB and never gives more credit.
    let mut credit = guest_hdr(Op::CreditUpdate, 1000, 52);
    credit.buf_alloc = 4096;
    r.send(credit, &[]);
    host.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0usize;
    let mut delivered = 0usize;
    let mut credit_requests = 0;
    for _ in 0..64 {
        match (&host).write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
        r.host_ready();
        for (h, d) in r.recv() {
            delivered += d.len();
            if h.op == Op::CreditRequest as u16 {
                credit_requests += 1;
                // A guest that answers with no more credit than before.
                r.send(credit, &[]);
            }
        }
    }
    assert_eq!(credit_requests, 1, "asked once, no ping-pong");
    assert!(
        written < 64 * chunk.len(),
        "the host client blocks, it does not fill our memory"
    );
    assert_eq!(delivered, 4096, "never more than the guest's credit");
    assert_eq!(r.dev.muxer.buffered_bytes(), 0);
}

#[test]
fn a_guest_sending_past_its_credit_is_reset_and_buffers_stay_bounded() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let (_listener, _host) = guest_connection(&mut r);
    let data = vec![1u8; packet::MAX_PKT_LEN as usize];
    let mut sent = 0;
    while r.metrics().credit_overrun.count() == 0 {
        r.send(guest_hdr(Op::Rw, 1000, 52), &data);
        sent += 1;
        assert!(r.dev.muxer.buffered_bytes() <= CONN_BUF_SIZE as usize);
        assert!(sent < 64, "the host never reads: the overrun must come");
    }
    let got = r.recv();
    assert_eq!(ops(&got).last(), Some(&(Op::Rst as u16)));
    r.dev.forget_watches();
    assert_eq!(r.dev.muxer.open_peers(), 0);
}

#[test]
fn a_credit_update_claiming_unsent_bytes_resets_the_connection() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let (_listener, mut host) = guest_connection(&mut r);
    let mut lie = guest_hdr(Op::CreditUpdate, 1000, 52);
    lie.fwd_cnt = 1_000_000;
    r.send(lie, &[]);
    assert_eq!(r.metrics().credit_lies.count(), 1);
    assert_eq!(ops(&r.recv()), vec![Op::Rst as u16]);
    assert!(sees_eof(&mut host));
}

#[test]
fn bad_headers_are_dropped_or_reset_and_counted_by_reason() {
    let mem = memory();
    let mut r = rig(&mem, None);
    r.send_raw(&[0u8; 20]);
    r.send(
        Header {
            src_cid: 9,
            ..guest_hdr(Op::Request, 1, 2)
        },
        &[],
    );
    r.send(
        Header {
            dst_cid: 5,
            ..guest_hdr(Op::Request, 1, 2)
        },
        &[],
    );
    assert!(
        r.recv().is_empty(),
        "no reply to a short or spoofed header, nor to one addressed to another CID"
    );
    r.send(
        Header {
            type_: 2,
            ..guest_hdr(Op::Request, 1, 2)
        },
        &[],
    );
    r.send(
        Header {
            op: 99,
            ..guest_hdr(Op::Request, 1, 2)
        },
        &[],
    );
    let mut long = guest_hdr(Op::Rw, 1, 2).to_bytes();
    long[24..28].copy_from_slice(&100u32.to_le_bytes());
    r.send_raw(&long);
    assert_eq!(r.recv().len(), 3, "an RST for each");
    let m = r.metrics();
    assert_eq!(m.bad_header.count(), 6);
    assert_eq!(m.bad_header_short.count(), 1);
    assert_eq!(m.bad_src_cid.count(), 1);
    assert_eq!(m.bad_dst_cid.count(), 1);
    assert_eq!(m.bad_type.count(), 1);
    assert_eq!(m.bad_op.count(), 1);
    assert_eq!(m.bad_len.count(), 1);
    // Data for no connection gets an RST too, an RST for none gets nothing.
    r.send(guest_hdr(Op::Rw, 1, 2), b"x");
    r.send(guest_hdr(Op::Rst, 1, 2), &[]);
    assert_eq!(ops(&r.recv()), vec![Op::Rst as u16]);
}

#[test]
fn rsts_for_a_guest_that_does_not_read_are_bounded() {
    let mem = memory();
    let mut r = rig(&mem, None);
    for port in 0..(muxer::MAX_PENDING_RSTS as u32 + 10) {
        r.send(guest_hdr(Op::Rw, port, 2), b"x");
    }
    assert_eq!(r.metrics().rst_dropped.count(), 10);
}

#[test]
fn a_device_reset_ends_every_connection() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let (_listener, mut host) = guest_connection(&mut r);
    let queues = r.dev.reset();
    assert_eq!(queues.len(), 3);
    r.dev.forget_watches();
    assert!(sees_eof(&mut host));
    assert_eq!(r.dev.muxer.open_peers(), 0);
}
