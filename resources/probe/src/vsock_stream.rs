//! Stream connections over `virtio::vsock`: a fixed table of connections to and from the host
//! (CID 2), with credit-based flow control. Every packet sent carries the connection's own
//! `buf_alloc` and `fwd_cnt` (bytes the scenario has consumed, told by `consumed`); data is
//! sent only within the peer's credit (`peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`). The
//! vsock scenarios' command line is read here too:
//! `probe.port=` (default 5000), `probe.count=`, `probe.bytes=`, `probe.reply=`,
//! `probe.secs=` (default 10), `probe.tsc_mhz=` (default 2000).

use crate::cmdline;
use crate::netstack::parse_dec;
use crate::virtio::vsock::{Hdr, Packet, Vsock, DEVICE_ID_VSOCK, HOST_CID, TX_BUF, TYPE_STREAM};
use crate::virtio::vsock::{OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN};
use crate::virtio::{self, dma, tsc};
use crate::zero_page::BootInfo;

pub const MAX_CONNS: usize = 128;
/// Local ports of guest-initiated connections start here.
const FIRST_LOCAL_PORT: u32 = 49152;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum State {
    Free,
    Connecting,
    Open,
    /// Ended by the peer's RST.
    Reset,
    /// Ended by a full SHUTDOWN from the peer (answered with RST) or our own close.
    Closed,
}

#[derive(Clone, Copy)]
pub struct Conn {
    pub state: State,
    pub local_port: u32,
    pub peer_port: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
    reported_fwd: u32,
    pub tx_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// SHUTDOWN flags the peer sent.
    pub peer_shutdown: u32,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

const FREE: Conn = Conn {
    state: State::Free,
    local_port: 0,
    peer_port: 0,
    buf_alloc: 0,
    fwd_cnt: 0,
    reported_fwd: 0,
    tx_cnt: 0,
    peer_buf_alloc: 0,
    peer_fwd_cnt: 0,
    peer_shutdown: 0,
    rx_bytes: 0,
    tx_bytes: 0,
};

impl Conn {
    /// Bytes the peer can take now.
    pub fn credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }
}

/// What one received packet meant.
pub enum Event {
    /// Nothing came.
    Idle,
    /// A host connection to our listening port was accepted.
    Accepted(usize),
    /// Our REQUEST was answered (`connect_wait` waits for it).
    Opened,
    /// Data for a connection, valid until the next poll; `consumed` it when done.
    Data(usize, &'static [u8]),
    /// The connection ended (state Reset or Closed).
    Ended(usize),
    /// Anything else (credit updates, packets for no connection, answered with RST).
    Other,
}

pub struct Stack {
    pub vs: Vsock,
    pub conns: [Conn; MAX_CONNS],
    /// Host connections to this port are accepted (0: none).
    pub listen_port: u32,
    /// The buf_alloc new connections advertise.
    pub buf_alloc: u32,
    next_port: u32,
    /// Packets that matched no connection or broke the rules (answered with RST where due).
    pub stray: u64,
    /// RW bytes beyond the credit we gave (dropped).
    pub over_credit: u64,
}

/// The vsock scenarios' parameters.
pub struct Params {
    pub port: u32,
    pub count: u64,
    pub bytes: u64,
    pub reply: Option<u64>,
    pub secs: u64,
    pub tsc_per_us: u64,
}

impl Params {
    pub fn parse(boot: &BootInfo) -> Self {
        let line = boot.cmdline();
        let num = |key: &[u8]| cmdline::param(line, key).and_then(parse_dec);
        Self {
            port: num(b"probe.port").unwrap_or(5000) as u32,
            count: num(b"probe.count").unwrap_or(1),
            bytes: num(b"probe.bytes").unwrap_or(1 << 20),
            reply: num(b"probe.reply"),
            secs: num(b"probe.secs").unwrap_or(10),
            tsc_per_us: num(b"probe.tsc_mhz").unwrap_or(2000).max(1),
        }
    }

    /// The TSC value `ms` milliseconds from now.
    pub fn deadline_ms(&self, ms: u64) -> u64 {
        tsc().wrapping_add(ms * 1000 * self.tsc_per_us)
    }

    pub fn usecs_since(&self, start: u64) -> u64 {
        tsc().wrapping_sub(start) / self.tsc_per_us
    }
}

/// Whether the TSC has passed `deadline`.
pub fn passed(deadline: u64) -> bool {
    (tsc().wrapping_sub(deadline) as i64) >= 0
}

/// The first virtio-vsock device, opened (its DMA window must be RAM).
pub fn open(boot: &BootInfo) -> Result<Stack, &'static str> {
    if !dma::available(boot) {
        return Err("no-ram-for-dma");
    }
    let dev = virtio::find(boot, DEVICE_ID_VSOCK).ok_or("no-vsock-device")?;
    let vs = Vsock::open(dev).map_err(|e| e.as_str())?;
    Ok(Stack {
        vs,
        conns: [FREE; MAX_CONNS],
        listen_port: 0,
        buf_alloc: 256 * 1024,
        next_port: FIRST_LOCAL_PORT,
        stray: 0,
        over_credit: 0,
    })
}

impl Stack {
    /// A header from us to the host for connection `c`.
    pub fn hdr(&self, c: &Conn, op: u16, len: u32) -> Hdr {
        Hdr {
            src_cid: self.vs.cid,
            dst_cid: HOST_CID,
            src_port: c.local_port,
            dst_port: c.peer_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: c.buf_alloc,
            fwd_cnt: c.fwd_cnt,
        }
    }

    fn send_ctl(&mut self, i: usize, op: u16, flags: u32) {
        let mut h = self.hdr(&self.conns[i], op, 0);
        h.flags = flags;
        self.conns[i].reported_fwd = self.conns[i].fwd_cnt;
        self.vs.send(&h, &[]);
        self.vs.flush();
    }

    fn free_slot(&self) -> Option<usize> {
        self.conns.iter().position(|c| c.state == State::Free)
    }

    /// Sends a REQUEST to host port `port` from a fresh local port; the connection opens on
    /// Event::Opened. None when the table is full.
    pub fn connect(&mut self, port: u32) -> Option<usize> {
        let i = self.free_slot()?;
        self.conns[i] = Conn {
            state: State::Connecting,
            local_port: self.next_port,
            peer_port: port,
            buf_alloc: self.buf_alloc,
            ..FREE
        };
        self.next_port = self.next_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
        self.send_ctl(i, OP_REQUEST, 0);
        Some(i)
    }

    /// Connects and waits for the answer: Ok(index) or Err(state: Reset, or Connecting on
    /// timeout). Events for other connections meanwhile are dropped.
    pub fn connect_wait(&mut self, port: u32, deadline: u64) -> Result<usize, State> {
        let i = self.connect(port).ok_or(State::Free)?;
        while self.conns[i].state == State::Connecting && !passed(deadline) {
            let _ = self.poll();
        }
        match self.conns[i].state {
            State::Open => Ok(i),
            State::Connecting => {
                self.close(i);
                Err(State::Connecting)
            }
            s => {
                self.conns[i].state = State::Free;
                Err(s)
            }
        }
    }

    /// Sends what fits in the peer's credit and one TX buffer: the bytes sent.
    pub fn send(&mut self, i: usize, data: &[u8]) -> usize {
        let c = self.conns[i];
        if c.state != State::Open || c.peer_shutdown & 1 != 0 {
            return 0;
        }
        let n = data.len().min(c.credit() as usize).min(TX_BUF as usize);
        if n == 0 || !self.vs.can_send() {
            return 0;
        }
        let h = self.hdr(&c, OP_RW, n as u32);
        if !self.vs.send(&h, &data[..n]) {
            return 0;
        }
        let c = &mut self.conns[i];
        c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
        c.tx_bytes += n as u64;
        c.reported_fwd = c.fwd_cnt;
        n
    }

    /// Asks the peer for its credit (when ours for it ran out).
    pub fn credit_request(&mut self, i: usize) {
        self.send_ctl(i, OP_CREDIT_REQUEST, 0);
    }

    /// The scenario is done with `n` received bytes: they count in fwd_cnt, told to the peer
    /// once a quarter of buf_alloc is unreported.
    pub fn consumed(&mut self, i: usize, n: usize) {
        let c = &mut self.conns[i];
        c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
        if c.state == State::Open && c.fwd_cnt.wrapping_sub(c.reported_fwd) >= c.buf_alloc / 4 {
            self.send_ctl(i, OP_CREDIT_UPDATE, 0);
        }
    }

    /// SHUTDOWN (both directions) and the slot freed; the peer answers with RST, which then
    /// matches no connection and is dropped.
    pub fn close(&mut self, i: usize) {
        if matches!(self.conns[i].state, State::Open | State::Connecting) {
            self.send_ctl(i, OP_SHUTDOWN, 3);
        }
        self.conns[i].state = State::Free;
    }

    /// Frees the slot of an ended connection.
    pub fn release(&mut self, i: usize) {
        self.conns[i].state = State::Free;
    }

    fn find(&self, h: &Hdr) -> Option<usize> {
        self.conns
            .iter()
            .position(|c| c.state != State::Free && c.local_port == h.dst_port && c.peer_port == h.src_port)
    }

    /// An RST answering `h` (for packets that match nothing).
    fn reset_reply(&mut self, h: &Hdr) {
        let r = Hdr {
            src_cid: self.vs.cid,
            dst_cid: h.src_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            kind: TYPE_STREAM,
            op: OP_RST,
            ..Hdr::default()
        };
        self.vs.send(&r, &[]);
        self.vs.flush();
    }

    /// Handles at most one received packet.
    pub fn poll(&mut self) -> Event {
        let Some(Packet { hdr: h, data, .. }) = self.vs.recv() else { return Event::Idle };
        if h.src_cid != HOST_CID || h.dst_cid != self.vs.cid || h.kind != TYPE_STREAM {
            self.stray += 1;
            return Event::Other;
        }
        let Some(i) = self.find(&h) else { return self.unmatched(&h) };
        let c = &mut self.conns[i];
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        match h.op {
            OP_RESPONSE if c.state == State::Connecting => {
                c.state = State::Open;
                Event::Opened
            }
            OP_RST => {
                c.state = if c.state == State::Closed { State::Closed } else { State::Reset };
                Event::Ended(i)
            }
            OP_SHUTDOWN => {
                c.peer_shutdown |= h.flags & 3;
                if c.peer_shutdown == 3 {
                    c.state = State::Closed;
                    self.send_ctl(i, OP_RST, 0);
                    return Event::Ended(i);
                }
                Event::Other
            }
            OP_RW if c.state == State::Open => {
                let room = c.buf_alloc.saturating_sub(c.rx_bytes_unconsumed());
                if data.len() > room as usize {
                    self.over_credit += (data.len() - room as usize) as u64;
                }
                let data = &data[..data.len().min(room as usize)];
                c.rx_bytes += data.len() as u64;
                Event::Data(i, data)
            }
            OP_CREDIT_REQUEST => {
                self.send_ctl(i, OP_CREDIT_UPDATE, 0);
                Event::Other
            }
            OP_CREDIT_UPDATE => Event::Other,
            _ => {
                self.stray += 1;
                Event::Other
            }
        }
    }

    /// A packet for no connection: a host REQUEST to the listening port is accepted, RST
    /// answers the rest (but never an RST).
    fn unmatched(&mut self, h: &Hdr) -> Event {
        if h.op == OP_REQUEST && self.listen_port != 0 && h.dst_port == self.listen_port {
            if let Some(i) = self.free_slot() {
                self.conns[i] = Conn {
                    state: State::Open,
                    local_port: h.dst_port,
                    peer_port: h.src_port,
                    buf_alloc: self.buf_alloc,
                    peer_buf_alloc: h.buf_alloc,
                    peer_fwd_cnt: h.fwd_cnt,
                    ..FREE
                };
                self.send_ctl(i, OP_RESPONSE, 0);
                return Event::Accepted(i);
            }
        }
        if h.op != OP_RST {
            self.stray += 1;
            self.reset_reply(h);
        }
        Event::Other
    }
}

impl Conn {
    /// Received bytes the scenario has not yet consumed.
    fn rx_bytes_unconsumed(&self) -> u32 {
        (self.rx_bytes as u32).wrapping_sub(self.fwd_cnt)
    }
}

/// Byte `offset` of the stream pattern the vsock scenarios send: `offset % 251` (a prime, so
/// it never lines up with buffer sizes). In Python: `bytes(i % 251 for i in range(n))`.
pub fn pattern(buf: &mut [u8], offset: u64) {
    let mut value = (offset % 251) as u8;
    for byte in buf.iter_mut() {
        *byte = value;
        value = if value == 250 { 0 } else { value + 1 };
    }
}
