//! The connection table: host clients finishing their `CONNECT` line, connections both ways
//! keyed by (host port, guest port), the policy that admits them, the RSTs owed to the guest,
//! and the round-robin list of connections with something for the RX queue.
//!
//! Every table is bounded: connections by `max_connections`, host clients still writing their
//! `CONNECT` line by [`MAX_HANDSHAKES`] (apart, so stuck local clients cannot take the guest's
//! places) and each for [`CONNECT_TIMEOUT`] at most, the RX list by the peers (each at most
//! once), the RST list by [`MAX_PENDING_RSTS`] (a guest that does not read its RX queue loses
//! the extra RSTs, counted).

use std::collections::{HashMap, VecDeque};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::{VsockDeviceConfig, VsockPolicy};
use super::connection::{Connection, EndReason, State};
use super::listener::{connect_nonblocking, HostClient, Line};
use super::packet::{Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND};
use crate::logger::RateLimitedLog;
use crate::metrics::VsockDeviceMetrics;
use crate::rate_limiter::{
    BucketUpdate, RateLimiter, RateLimiterConfig, RateLimiterError, TokenBucket,
};

/// Host clients in the middle of their `CONNECT` line at most (they do not count toward
/// `max_connections`).
pub const MAX_HANDSHAKES: usize = 16;
/// How long a host client waits for the guest's RESPONSE, and how long it may take to write
/// its `CONNECT` line.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection whose host side ended waits for the guest's RST.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// RSTs to connection-less guest packets held for the RX queue at most.
pub const MAX_PENDING_RSTS: usize = 256;
/// Connections accepted per listener event (the rest come with the next one).
const ACCEPTS_PER_EVENT: usize = 32;
/// Host ports we give host-initiated connections start here.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Tokens (event-loop ids of peers) are below this.
pub const MAX_TOKENS: u32 = 1 << 28;

/// What sits behind a token.
pub enum Peer {
    /// A host client that has not finished its `CONNECT` line.
    Handshake(HostClient),
    /// A connection.
    Conn(Box<Connection>),
}

impl Peer {
    /// The host socket.
    pub fn stream(&self) -> &UnixStream {
        match self {
            Self::Handshake(h) => &h.stream,
            Self::Conn(c) => &c.stream,
        }
    }
}

/// Whether the event loop watches the listener: not while `accept` fails for want of fds (a
/// level-triggered listener it cannot accept from would wake it at once, forever); the
/// periodic sweep watches it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerWatch {
    /// Watched.
    Watched,
    /// `accept` failed: the event loop must stop watching it.
    Unwatch,
    /// Not watched until the next sweep.
    Unwatched,
}

/// Which fd of a peer the event loop must start watching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    /// Its socket.
    Stream,
    /// Its rate limiter's timer.
    Limiter,
}

#[derive(Default)]
struct Logs {
    flow: RateLimitedLog,
    refused: RateLimitedLog,
    accept: RateLimitedLog,
}

/// The connection table.
pub struct Muxer {
    guest_cid: u64,
    config: VsockDeviceConfig,
    policy: VsockPolicy,
    /// The listener on `uds_path`.
    pub listener: UnixListener,
    /// Whether the event loop must watch the listener.
    pub listener_watch: ListenerWatch,
    peers: HashMap<u32, Peer>,
    /// Peers that are [`Peer::Handshake`].
    handshakes: usize,
    keys: HashMap<(u32, u32), u32>,
    rx_list: VecDeque<u32>,
    rsts: VecDeque<Header>,
    next_token: u32,
    next_local_port: u32,
    /// Fds the event loop must start watching.
    pub added: Vec<(u32, Watch)>,
    /// Ended peers: the event loop stops watching their fds, then drops them.
    pub removed: Vec<Peer>,
    metrics: Arc<VsockDeviceMetrics>,
    logs: Logs,
}

/// The per-connection limiter a policy asks for.
fn conn_limiter(policy: &VsockPolicy) -> Result<RateLimiter, RateLimiterError> {
    RateLimiter::new(&policy.connection_rate_limiter.unwrap_or_default())
}

/// Replaces both buckets of `limiter` with `config`'s (absent: no limit).
pub fn replace_buckets(limiter: &mut RateLimiter, config: Option<&RateLimiterConfig>) {
    let bucket = |b: Option<&crate::rate_limiter::TokenBucketConfig>| {
        b.and_then(TokenBucket::from_config)
            .map_or(BucketUpdate::Disabled, BucketUpdate::Update)
    };
    let bytes = bucket(config.and_then(|c| c.bandwidth.as_ref()));
    let ops = bucket(config.and_then(|c| c.ops.as_ref()));
    limiter.update_buckets(bytes, ops);
}

impl Muxer {
    /// An empty table behind `listener`.
    pub fn new(
        config: &VsockDeviceConfig,
        listener: UnixListener,
        metrics: Arc<VsockDeviceMetrics>,
    ) -> Self {
        Self {
            guest_cid: u64::from(config.guest_cid),
            policy: config.policy(),
            config: config.clone(),
            listener,
            listener_watch: ListenerWatch::Watched,
            peers: HashMap::new(),
            handshakes: 0,
            keys: HashMap::new(),
            rx_list: VecDeque::new(),
            rsts: VecDeque::new(),
            next_token: 0,
            next_local_port: FIRST_LOCAL_PORT,
            added: Vec::new(),
            removed: Vec::new(),
            metrics,
            logs: Logs::default(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &VsockPolicy {
        &self.policy
    }

    /// Peers open now (connections and host clients in their handshake).
    pub fn open_peers(&self) -> usize {
        self.peers.len()
    }

    /// Bytes of guest data buffered for host sockets, all connections together.
    pub fn buffered_bytes(&self) -> usize {
        self.peers
            .values()
            .map(|p| match p {
                Peer::Conn(c) => c.buffered(),
                Peer::Handshake(_) => 0,
            })
            .sum()
    }

    /// The peer behind `token`.
    pub fn peer(&self, token: u32) -> Option<&Peer> {
        self.peers.get(&token)
    }

    /// The tokens in use.
    pub fn tokens(&self) -> Vec<u32> {
        self.peers.keys().copied().collect()
    }

    /// Replaces the policy: new connections are judged by it, open ones keep going under its
    /// per-connection limit.
    pub fn update_policy(&mut self, policy: VsockPolicy) {
        for peer in self.peers.values_mut() {
            if let Peer::Conn(c) = peer {
                replace_buckets(&mut c.limiter, policy.connection_rate_limiter.as_ref());
            }
        }
        self.policy = policy;
    }

    fn at_cap(&self) -> bool {
        self.peers.len() - self.handshakes >= self.policy.max_connections() as usize
    }

    /// Takes the host client of `token` out of the table (it stays open).
    fn take_handshake(&mut self, token: u32) -> Option<HostClient> {
        if !matches!(self.peers.get(&token), Some(Peer::Handshake(_))) {
            return None;
        }
        let Some(Peer::Handshake(client)) = self.peers.remove(&token) else {
            return None;
        };
        self.handshakes -= 1;
        Some(client)
    }

    /// Closes the host client of `token`, counted as a bad handshake.
    fn drop_handshake(&mut self, token: u32, why: &str) {
        if let Some(client) = self.take_handshake(token) {
            self.removed.push(Peer::Handshake(client));
            self.refuse(|m| &m.refused_bad_handshake, why);
        }
    }

    fn alloc_token(&mut self) -> u32 {
        // The table holds at most MAX_CONNECTIONS_LIMIT peers: a free token is near.
        loop {
            let token = self.next_token;
            self.next_token = (self.next_token + 1) % MAX_TOKENS;
            if !self.peers.contains_key(&token) {
                return token;
            }
        }
    }

    fn queue_rx(&mut self, token: u32) {
        if let Some(Peer::Conn(c)) = self.peers.get_mut(&token) {
            if !c.in_rx_list && c.has_rx() {
                c.in_rx_list = true;
                self.rx_list.push_back(token);
            }
        }
    }

    /// Answers a refused guest packet with an RST (bounded, see [`MAX_PENDING_RSTS`]).
    pub fn reply_rst(&mut self, guest_hdr: &Header) {
        self.push_rst(guest_hdr.rst_reply());
    }

    fn push_rst(&mut self, hdr: Header) {
        if self.rsts.len() >= MAX_PENDING_RSTS {
            self.metrics.rst_dropped.inc();
            return;
        }
        self.rsts.push_back(hdr);
    }

    fn refuse(&mut self, counter: fn(&VsockDeviceMetrics) -> &crate::metrics::Counter, why: &str) {
        counter(&self.metrics).inc();
        if let Some(n) = self.logs.refused.hit() {
            log::info!("vsock: connection refused: {why} ({n} so far)");
        }
    }

    /// Accepts host clients waiting on the listener (a bounded number per call).
    pub fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // The client gave up before we took it: nothing of it is left.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO)
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // Out of fds (EMFILE, ENFILE) or memory: the client stays in the backlog
                    // until the sweep looks again.
                    self.metrics.event_fails.inc();
                    if let Some(n) = self.logs.accept.hit() {
                        log::warn!("vsock: accept failed, listener paused: {e} ({n} so far)");
                    }
                    if self.listener_watch == ListenerWatch::Watched {
                        self.listener_watch = ListenerWatch::Unwatch;
                    }
                    return;
                }
            };
            if self.handshakes >= MAX_HANDSHAKES {
                self.refuse(
                    |m| &m.refused_max_connections,
                    "too many host clients in their CONNECT line",
                );
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                self.metrics.event_fails.inc();
                continue;
            }
            let token = self.alloc_token();
            self.handshakes += 1;
            self.peers
                .insert(token, Peer::Handshake(HostClient::new(stream)));
            self.added.push((token, Watch::Stream));
        }
    }

    /// The socket of `token` is ready (`readable`, `writable`, or failed: `error`).
    pub fn on_peer_event(&mut self, token: u32, readable: bool, writable: bool, error: bool) {
        match self.peers.get_mut(&token) {
            None => {}
            Some(Peer::Handshake(client)) => match client.read_line() {
                Line::Partial => {}
                Line::Connect(port) => self.host_connect(token, port),
                Line::Garbage => self.drop_handshake(token, "bad CONNECT line"),
            },
            Some(Peer::Conn(conn)) => {
                if readable || error {
                    conn.host_readable = true;
                }
                if writable {
                    self.flush(token);
                }
                self.settle(token);
            }
        }
    }

    /// The rate limiter of `token` fired.
    pub fn on_limiter_timer(&mut self, token: u32) {
        if let Some(Peer::Conn(conn)) = self.peers.get_mut(&token) {
            if conn.limiter.on_timer().is_err() {
                self.metrics.event_fails.inc();
            }
            self.flush(token);
            self.settle(token);
        }
    }

    fn host_connect(&mut self, token: u32, port: u32) {
        let Some(client) = self.take_handshake(token) else {
            return;
        };
        if self.at_cap() {
            self.removed.push(Peer::Handshake(client));
            self.refuse(|m| &m.refused_max_connections, "max_connections reached");
            return;
        }
        if !self.policy.host_may_connect(port) {
            self.removed.push(Peer::Handshake(client));
            self.refuse(
                |m| &m.refused_policy_port,
                "guest port not in host_initiated",
            );
            return;
        }
        let limiter = match conn_limiter(&self.policy) {
            Ok(l) => l,
            Err(e) => {
                self.metrics.event_fails.inc();
                log::warn!("vsock: {e}");
                self.removed.push(Peer::Handshake(client));
                return;
            }
        };
        let mut local = self.next_local_port;
        for _ in 0..=self.keys.len() {
            if !self.keys.contains_key(&(local, port)) {
                break;
            }
            local = local.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
        }
        self.next_local_port = local.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
        let state = State::LocalInit {
            since: Instant::now(),
        };
        let mut conn = Connection::new(client.stream, local, port, true, state, limiter);
        conn.pending.request = true;
        self.peers.insert(token, Peer::Conn(Box::new(conn)));
        self.keys.insert((local, port), token);
        self.added.push((token, Watch::Limiter));
        self.queue_rx(token);
    }

    fn guest_connect(&mut self, hdr: &Header) {
        let port = hdr.dst_port;
        if !self.policy.guest_may_connect(port) {
            self.refuse(
                |m| &m.refused_policy_port,
                "host port not in guest_initiated",
            );
            return self.push_rst(hdr.rst_reply());
        }
        if self.at_cap() {
            self.refuse(|m| &m.refused_max_connections, "max_connections reached");
            return self.push_rst(hdr.rst_reply());
        }
        let stream = match connect_nonblocking(&self.config.guest_initiated_path(port)) {
            Ok(s) => s,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                self.metrics.event_fails.inc();
                if let Some(n) = self.logs.accept.hit() {
                    log::warn!("vsock: cannot open a host socket: {e} ({n} so far)");
                }
                return self.push_rst(hdr.rst_reply());
            }
            Err(_) => {
                self.refuse(
                    |m| &m.refused_no_listener,
                    "nothing listens on the host port",
                );
                return self.push_rst(hdr.rst_reply());
            }
        };
        let Ok(limiter) = conn_limiter(&self.policy) else {
            self.metrics.event_fails.inc();
            return self.push_rst(hdr.rst_reply());
        };
        let mut conn = Connection::new(
            stream,
            port,
            hdr.src_port,
            false,
            State::Established,
            limiter,
        );
        if !conn.update_peer_credit(hdr) {
            self.metrics.credit_lies.inc();
            return self.push_rst(hdr.rst_reply());
        }
        conn.pending.response = true;
        self.metrics.conns_opened_guest.inc();
        let token = self.alloc_token();
        self.peers.insert(token, Peer::Conn(Box::new(conn)));
        self.keys.insert((port, hdr.src_port), token);
        self.added.push((token, Watch::Stream));
        self.added.push((token, Watch::Limiter));
        self.queue_rx(token);
    }

    /// Handles a checked packet from the guest (`data`: its payload).
    pub fn on_guest_packet(&mut self, hdr: &Header, op: Op, data: &[u8]) {
        let Some(&token) = self.keys.get(&(hdr.dst_port, hdr.src_port)) else {
            match op {
                Op::Request => self.guest_connect(hdr),
                Op::Rst => {}
                _ => {
                    self.metrics.unexpected_packets.inc();
                    self.push_rst(hdr.rst_reply());
                }
            }
            return;
        };
        let Some(Peer::Conn(conn)) = self.peers.get_mut(&token) else {
            return;
        };
        if !conn.update_peer_credit(hdr) {
            self.metrics.credit_lies.inc();
            return self.end(token, EndReason::CreditLie, true);
        }
        match (op, conn.state) {
            (Op::Rst, State::LocalInit { .. }) => {
                return self.end(token, EndReason::GuestRefused, false)
            }
            (Op::Rst, State::Closing { .. }) => return self.end(token, EndReason::Closed, false),
            (Op::Rst, State::Established) => return self.end(token, EndReason::GuestReset, false),
            (Op::Response, State::LocalInit { .. }) => {
                conn.state = State::Established;
                conn.host_readable = true;
                let line = format!("OK {}\n", conn.local_port);
                conn.queue_host_line(line.as_bytes());
                self.metrics.conns_opened_host.inc();
                self.flush(token);
            }
            (Op::Request | Op::Response, _) | (_, State::LocalInit { .. }) => {
                self.metrics.unexpected_packets.inc();
                return self.end(token, EndReason::Protocol, true);
            }
            (Op::Rw, _) => {
                if conn.peer_shutdown & SHUTDOWN_SEND != 0 {
                    self.metrics.unexpected_packets.inc();
                    return self.end(token, EndReason::Protocol, true);
                }
                if conn.take_guest_data(data).is_err() {
                    self.metrics.credit_overrun.inc();
                    return self.end(token, EndReason::CreditOverrun, true);
                }
                self.flush(token);
            }
            (Op::CreditUpdate, _) => {}
            (Op::CreditRequest, _) => conn.pending.credit_update = true,
            (Op::Shutdown, _) => conn.peer_shutdown |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND),
        }
        self.settle(token);
    }

    /// Writes what `token` buffered for its host socket.
    fn flush(&mut self, token: u32) {
        let Some(Peer::Conn(conn)) = self.peers.get_mut(&token) else {
            return;
        };
        if let Err(e) = conn.flush_to_host() {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                // The host client went away: its end of file shows up on the read side.
                conn.host_readable = true;
                return;
            }
            self.end(token, EndReason::HostError, true);
        }
    }

    /// After anything happened to `token`: half-close the host socket once the guest is done
    /// sending, end the connection once both sides are done, or queue it for the RX queue.
    fn settle(&mut self, token: u32) {
        let Some(Peer::Conn(conn)) = self.peers.get_mut(&token) else {
            return;
        };
        if conn.guest_send_done() && !conn.host_write_shut {
            conn.host_write_shut = true;
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
        let both = SHUTDOWN_RCV | SHUTDOWN_SEND;
        if conn.peer_shutdown == both && conn.buffered() == 0 {
            return self.end(token, EndReason::Closed, true);
        }
        self.queue_rx(token);
    }

    /// Whether a packet waits for the RX queue.
    pub fn has_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rx_list.is_empty()
    }

    /// The next packet for the guest, its payload in `buf` (header's `len` bytes).
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<Header> {
        if let Some(hdr) = self.rsts.pop_front() {
            return Some(hdr);
        }
        while let Some(token) = self.rx_list.pop_front() {
            let Some(Peer::Conn(conn)) = self.peers.get_mut(&token) else {
                continue;
            };
            conn.in_rx_list = false;
            match conn.next_packet(self.guest_cid, buf) {
                Ok(Some(hdr)) => {
                    self.queue_rx(token);
                    return Some(hdr);
                }
                Ok(None) => {}
                Err(_) => {
                    self.end(token, EndReason::HostError, true);
                    if let Some(hdr) = self.rsts.pop_front() {
                        return Some(hdr);
                    }
                }
            }
        }
        None
    }

    /// Ends connections whose guest did not answer in time, and closes host clients that
    /// did not finish their `CONNECT` line in time.
    pub fn sweep(&mut self, now: Instant) {
        let slow: Vec<u32> = self
            .peers
            .iter()
            .filter_map(|(&token, peer)| match peer {
                Peer::Handshake(h) if now.duration_since(h.accepted) >= CONNECT_TIMEOUT => {
                    Some(token)
                }
                _ => None,
            })
            .collect();
        for token in slow {
            self.drop_handshake(token, "CONNECT line not finished in time");
        }
        let late: Vec<u32> = self
            .peers
            .iter()
            .filter_map(|(&token, peer)| match peer {
                Peer::Conn(c) => match c.state {
                    State::LocalInit { since } if now.duration_since(since) >= CONNECT_TIMEOUT => {
                        Some(token)
                    }
                    State::Closing { since } if now.duration_since(since) >= CLOSE_TIMEOUT => {
                        Some(token)
                    }
                    _ => None,
                },
                Peer::Handshake(_) => None,
            })
            .collect();
        for token in late {
            self.end(token, EndReason::Timeout, true);
        }
    }

    /// Ends every peer (device reset): no RST, the guest's driver starts over.
    pub fn end_all(&mut self) {
        for token in self.tokens() {
            match self.peers.get(&token) {
                Some(Peer::Conn(_)) => self.end(token, EndReason::DeviceReset, false),
                Some(Peer::Handshake(_)) => {
                    if let Some(client) = self.take_handshake(token) {
                        self.removed.push(Peer::Handshake(client));
                    }
                }
                None => {}
            }
        }
        self.rsts.clear();
        self.rx_list.clear();
    }

    /// Ends connection `token` for `why`, with an RST to the guest when `rst`; counts it and
    /// writes its flow-log line.
    fn end(&mut self, token: u32, why: EndReason, rst: bool) {
        let Some(Peer::Conn(conn)) = self.peers.remove(&token) else {
            return;
        };
        self.keys.remove(&(conn.local_port, conn.peer_port));
        if rst {
            let hdr = Header::to_guest(self.guest_cid, conn.local_port, conn.peer_port, Op::Rst);
            self.push_rst(hdr);
        }
        let m = &self.metrics;
        let opened = !matches!(conn.state, State::LocalInit { .. });
        let counter = match why {
            EndReason::Closed => &m.conns_closed,
            EndReason::GuestReset => &m.conns_reset_by_guest,
            EndReason::GuestRefused => &m.refused_by_guest,
            EndReason::Timeout if !opened => &m.refused_by_guest,
            _ => &m.conns_reset_by_host,
        };
        counter.inc();
        if let Some(n) = self.logs.flow.hit() {
            let direction = if conn.host_initiated {
                "host_to_guest"
            } else {
                "guest_to_host"
            };
            log::info!(
                "vsock flow: direction={direction} host_port={} guest_port={} \
                 bytes_to_guest={} bytes_to_host={} duration_ms={} end={} ({n} so far)",
                conn.local_port,
                conn.peer_port,
                conn.bytes_to_guest,
                conn.bytes_to_host,
                conn.started.elapsed().as_millis(),
                why.name(),
            );
        }
        self.removed.push(Peer::Conn(conn));
    }
}
