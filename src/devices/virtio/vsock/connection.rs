//! One vsock stream connection between a guest port and a host Unix stream, with the
//! credit-based flow control of virtio 1.2 5.10.6.3.
//!
//! Guest to host: data the host socket does not take at once waits in a buffer of at most
//! [`CONN_BUF_SIZE`] bytes, which is the `buf_alloc` we advertise; `fwd_cnt` counts what went
//! to the host. A guest that sends beyond that credit is reset, so the buffer never grows past
//! its size. Host to guest: the host socket is read only when an RX buffer waits and the guest
//! has credit (`peer_buf_alloc - (rx_cnt - peer_fwd_cnt)`), straight into that buffer, so
//! nothing from the host is held here whatever the guest advertises.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::{Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND};
use crate::rate_limiter::{RateLimiter, TokenType};

/// Our receive buffer per connection (the `buf_alloc` the guest sees).
pub const CONN_BUF_SIZE: u32 = 128 * 1024;
/// Unannounced credit that triggers a CREDIT_UPDATE.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;
/// The most guest credit we act on: a larger `buf_alloc` is read as this, and a claim of more
/// than this many bytes in flight is a lie.
pub const MAX_PEER_CREDIT: u32 = 16 << 20;
/// Bytes one write to the host socket moves at most.
const WRITE_CHUNK: usize = 64 * 1024;
/// Bytes one read or write moves at most under a bandwidth limit: the limiter is paid before
/// the syscall and refunded what it did not move, so a large request would block the
/// connection for the whole of it (over-consumption) whatever it moved.
pub const LIMITED_CHUNK: usize = 4096;
/// The most bytes one syscall moves under a bandwidth limit when the bucket holds that much.
pub const MAX_LIMITED_CHUNK: usize = 64 * 1024;

/// The most bytes one syscall may move under `limiter`: what its bandwidth bucket can pay
/// now (at least [`LIMITED_CHUNK`], at most [`MAX_LIMITED_CHUNK`]), or `unlimited` without
/// a bandwidth bucket.
pub fn chunk_limit(limiter: &RateLimiter, unlimited: usize) -> usize {
    match limiter.bucket(TokenType::Bytes) {
        Some(bucket) => {
            let affordable = usize::try_from(bucket.available()).unwrap_or(usize::MAX);
            unlimited.min(affordable.clamp(LIMITED_CHUNK, MAX_LIMITED_CHUNK))
        }
        None => unlimited,
    }
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent (or to send), waiting for the guest's RESPONSE.
    LocalInit {
        /// When the host client asked.
        since: Instant,
    },
    /// Both sides may talk.
    Established,
    /// The host side ended; SHUTDOWN sent (or to send), waiting for the guest's RST.
    Closing {
        /// Since when.
        since: Instant,
    },
}

/// Why a connection ended (the flow log's `why`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Shutdown in order.
    Closed,
    /// The guest sent RST.
    GuestReset,
    /// The guest refused a host connection.
    GuestRefused,
    /// The guest did not answer in time.
    Timeout,
    /// The guest sent beyond its credit.
    CreditOverrun,
    /// The guest claimed to have consumed more than it was sent.
    CreditLie,
    /// The guest broke the protocol (an op out of place).
    Protocol,
    /// The host socket failed.
    HostError,
    /// The device was reset.
    DeviceReset,
}

impl EndReason {
    /// The name in the flow log.
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::GuestReset => "guest_reset",
            Self::GuestRefused => "guest_refused",
            Self::Timeout => "timeout",
            Self::CreditOverrun => "credit_overrun",
            Self::CreditLie => "credit_lie",
            Self::Protocol => "protocol",
            Self::HostError => "host_error",
            Self::DeviceReset => "device_reset",
        }
    }
}

/// Control packets a connection owes the guest (one of each at most).
#[derive(Clone, Copy, Debug, Default)]
pub struct Pending {
    /// REQUEST (host-initiated, not sent yet).
    pub request: bool,
    /// RESPONSE (guest-initiated, accepted).
    pub response: bool,
    /// SHUTDOWN with both flags (the host side ended).
    pub shutdown: bool,
    /// CREDIT_UPDATE.
    pub credit_update: bool,
}

/// One connection.
pub struct Connection {
    /// The host end.
    pub stream: UnixStream,
    /// The host-side vsock port.
    pub local_port: u32,
    /// The guest-side vsock port.
    pub peer_port: u32,
    /// Opened by a host client (`CONNECT`), else by the guest.
    pub host_initiated: bool,
    /// Where it is in its life.
    pub state: State,
    /// Owed control packets.
    pub pending: Pending,
    /// Its own rate limiter (`connection_rate_limiter`).
    pub limiter: RateLimiter,
    /// Waiting in the muxer's RX list.
    pub in_rx_list: bool,
    /// The host socket may have data (edge-triggered: set by readiness, cleared by EAGAIN).
    pub host_readable: bool,
    /// The host socket hit end of file.
    pub host_eof: bool,
    /// SHUTDOWN flags the guest sent.
    pub peer_shutdown: u32,
    /// The host socket's write side is shut down (the guest sends no more).
    pub host_write_shut: bool,
    /// A CREDIT_REQUEST went out since the guest last had credit (one per starvation, so a
    /// guest that answers with no credit cannot start a ping-pong).
    credit_requested: bool,
    tx_buf: VecDeque<u8>,
    /// Bytes at the front of `tx_buf` that are ours (the handshake line), not the guest's.
    own_bytes: usize,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Data bytes to the guest.
    pub bytes_to_guest: u64,
    /// Data bytes to the host.
    pub bytes_to_host: u64,
    /// When it was created.
    pub started: Instant,
}

/// A guest RW the connection cannot take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overrun;

impl Connection {
    /// A connection in `state` over `stream`.
    pub fn new(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        host_initiated: bool,
        state: State,
        limiter: RateLimiter,
    ) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            host_initiated,
            state,
            pending: Pending::default(),
            limiter,
            in_rx_list: false,
            host_readable: true,
            host_eof: false,
            peer_shutdown: 0,
            host_write_shut: false,
            credit_requested: false,
            tx_buf: VecDeque::new(),
            own_bytes: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            bytes_to_guest: 0,
            bytes_to_host: 0,
            started: Instant::now(),
        }
    }

    /// Takes the guest's credit from any of its headers; false when it claims to have
    /// consumed bytes it was never sent.
    pub fn update_peer_credit(&mut self, hdr: &Header) -> bool {
        let in_flight = self.rx_cnt.wrapping_sub(hdr.fwd_cnt);
        if in_flight > MAX_PEER_CREDIT {
            return false;
        }
        self.peer_buf_alloc = hdr.buf_alloc.min(MAX_PEER_CREDIT);
        self.peer_fwd_cnt = hdr.fwd_cnt;
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        true
    }

    /// Bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Bytes waiting for the host socket.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// Whether reading the host socket could produce a data packet now.
    pub fn wants_host_read(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
            && !self.limiter.is_blocked()
    }

    /// Whether host data may wait while the guest gave no credit, and it was not asked yet.
    fn wants_credit_request(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() == 0
            && !self.credit_requested
    }

    /// Whether the connection owes the guest a packet or has data for it.
    pub fn has_rx(&self) -> bool {
        let p = self.pending;
        p.request
            || p.response
            || p.shutdown
            || p.credit_update
            || self.wants_host_read()
            || self.wants_credit_request()
    }

    /// Fills in the fields every packet to the guest carries (our credit).
    pub fn header(&mut self, guest_cid: u64, op: Op) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending.credit_update = false;
        Header {
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt,
            ..Header::to_guest(guest_cid, self.local_port, self.peer_port, op)
        }
    }

    /// Takes data from a guest RW: writes what the host takes now, buffers the rest.
    pub fn take_guest_data(&mut self, data: &[u8]) -> Result<(), Overrun> {
        if self.tx_buf.len() - self.own_bytes + data.len() > CONN_BUF_SIZE as usize {
            return Err(Overrun);
        }
        self.tx_buf.extend(data);
        Ok(())
    }

    /// Queues bytes of our own for the host client (the `OK <port>` line).
    pub fn queue_host_line(&mut self, line: &[u8]) {
        self.tx_buf.extend(line);
        self.own_bytes += line.len();
    }

    /// Writes buffered data to the host socket until it would block or the limiter says
    /// wait; the guest's bytes among them advance `fwd_cnt`. Returns the guest bytes written.
    pub fn flush_to_host(&mut self) -> io::Result<usize> {
        let mut total = 0;
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let chunk = front.len().min(chunk_limit(&self.limiter, WRITE_CHUNK));
            if !self.limiter.consume(1, TokenType::Ops) {
                break;
            }
            if !self.limiter.consume(chunk as u64, TokenType::Bytes) {
                self.limiter.manual_replenish(1, TokenType::Ops);
                break;
            }
            match self.stream.write(&front[..chunk]) {
                Ok(n) => {
                    self.limiter
                        .manual_replenish((chunk - n) as u64, TokenType::Bytes);
                    self.tx_buf.drain(..n);
                    let own = n.min(self.own_bytes);
                    self.own_bytes -= own;
                    self.forwarded((n - own) as u32);
                    total += n - own;
                    if n == 0 {
                        break;
                    }
                }
                Err(e) => {
                    self.limiter.manual_replenish(1, TokenType::Ops);
                    self.limiter
                        .manual_replenish(chunk as u64, TokenType::Bytes);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        break;
                    }
                    return Err(e);
                }
            }
        }
        if self.tx_buf.is_empty() {
            // A drained buffer holds no memory for an idle connection.
            self.tx_buf.shrink_to(0);
        }
        Ok(total)
    }

    /// Counts `n` guest bytes as consumed by the host; owes a CREDIT_UPDATE when enough
    /// credit went unannounced.
    fn forwarded(&mut self, n: u32) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n);
        self.bytes_to_host += u64::from(n);
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.pending.credit_update = true;
        }
    }

    /// Reads host data for the guest into `buf` (at most the guest's credit); `Ok(0)` is end
    /// of file.
    pub fn read_host(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = chunk_limit(&self.limiter, buf.len()).min(self.peer_credit() as usize);
        if want == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if !self.limiter.consume(1, TokenType::Ops) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if !self.limiter.consume(want as u64, TokenType::Bytes) {
            self.limiter.manual_replenish(1, TokenType::Ops);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let result = self.stream.read(&mut buf[..want]);
        let got = *result.as_ref().unwrap_or(&0);
        self.limiter
            .manual_replenish((want - got) as u64, TokenType::Bytes);
        if got == 0 {
            self.limiter.manual_replenish(1, TokenType::Ops);
        }
        if let Ok(n) = result {
            self.rx_cnt = self.rx_cnt.wrapping_add(n as u32);
            self.bytes_to_guest += n as u64;
        }
        result
    }

    /// The next packet for the guest: owed control packets first, then host data (into
    /// `buf`, the header's `len` says how much), then the SHUTDOWN that follows the host's
    /// end of file, then a credit update. `Ok(None)`: nothing now.
    pub fn next_packet(&mut self, guest_cid: u64, buf: &mut [u8]) -> io::Result<Option<Header>> {
        if self.pending.request {
            self.pending.request = false;
            return Ok(Some(self.header(guest_cid, Op::Request)));
        }
        if self.pending.response {
            self.pending.response = false;
            return Ok(Some(self.header(guest_cid, Op::Response)));
        }
        if self.wants_host_read() && !buf.is_empty() {
            match self.read_host(buf) {
                Ok(0) => {
                    self.host_eof = true;
                    self.state = State::Closing {
                        since: Instant::now(),
                    };
                    self.pending.shutdown = true;
                }
                Ok(n) => {
                    let mut hdr = self.header(guest_cid, Op::Rw);
                    hdr.len = n as u32;
                    return Ok(Some(hdr));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The limiter's timer brings it back; otherwise the socket is empty.
                    if !self.limiter.is_blocked() {
                        self.host_readable = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.wants_credit_request() {
            self.credit_requested = true;
            return Ok(Some(self.header(guest_cid, Op::CreditRequest)));
        }
        if self.pending.shutdown {
            self.pending.shutdown = false;
            let mut hdr = self.header(guest_cid, Op::Shutdown);
            hdr.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
            return Ok(Some(hdr));
        }
        if self.pending.credit_update {
            return Ok(Some(self.header(guest_cid, Op::CreditUpdate)));
        }
        Ok(None)
    }

    /// Whether the guest said it will send no more and everything it sent reached the host.
    pub fn guest_send_done(&self) -> bool {
        self.peer_shutdown & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::rate_limiter::RateLimiterConfig;

    fn conn() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let limiter = RateLimiter::new(&RateLimiterConfig::default()).unwrap();
        (
            Connection::new(a, 1, 2, false, State::Established, limiter),
            b,
        )
    }

    fn credit(buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            buf_alloc,
            fwd_cnt,
            ..Header::default()
        }
    }

    #[test]
    fn guest_data_beyond_our_buffer_is_an_overrun() {
        let (mut c, _peer) = conn();
        assert!(c.take_guest_data(&vec![0; CONN_BUF_SIZE as usize]).is_ok());
        assert_eq!(c.take_guest_data(&[0]), Err(Overrun));
        assert_eq!(c.buffered(), CONN_BUF_SIZE as usize);
    }

    #[test]
    fn a_huge_buf_alloc_is_capped_and_a_fwd_cnt_ahead_of_what_was_sent_is_a_lie() {
        let (mut c, _peer) = conn();
        assert!(c.update_peer_credit(&credit(u32::MAX, 0)));
        assert_eq!(c.peer_credit(), MAX_PEER_CREDIT);
        assert!(
            !c.update_peer_credit(&credit(4096, 1)),
            "nothing was sent yet"
        );
        assert!(!c.update_peer_credit(&credit(4096, u32::MAX / 2)));
    }

    #[test]
    fn credit_updates_are_owed_after_a_quarter_of_the_buffer() {
        let (mut c, _peer) = conn();
        c.forwarded(CREDIT_UPDATE_THRESHOLD - 1);
        assert!(!c.pending.credit_update);
        c.forwarded(1);
        assert!(c.pending.credit_update);
        let h = c.header(3, Op::CreditUpdate);
        assert_eq!(h.fwd_cnt, CREDIT_UPDATE_THRESHOLD);
        assert!(!c.pending.credit_update);
    }
}
