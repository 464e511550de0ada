//! The guest-facing MMDS responder of one network interface (issue 15): a bounded smoltcp
//! stack that answers ARP for the MMDS address and HTTP on its port 80, and passes every other
//! frame on untouched.
//!
//! # Data flow (how the next slice wires it into virtio-net)
//! - TX, before the firewall: each frame the guest sends (after the virtio-net header is
//!   taken off) goes first to [`MmdsStack::handle_guest_frame`]. [`Verdict::Consumed`] means the
//!   frame was MMDS traffic (ARP about the MMDS address, or IPv4 TCP to it on port 80, or a
//!   TCP fragment to it) and is finished: it never reaches the firewall, the rate limiter or
//!   the tap. [`Verdict::Pass`] frames go on to `egress` as today.
//! - RX, answers: [`MmdsStack::pop_guest_frame`] yields the stack's frames (ARP replies,
//!   TCP segments, RSTs) from a bounded queue ([`TX_QUEUE_FRAMES`]); the RX path writes them
//!   into guest buffers ahead of tap frames (with a zeroed virtio-net header, checksums are
//!   complete), bypassing the firewall's `ingress`: they were made by the VMM, not received.
//!   After draining, the device calls [`MmdsStack::poll`], which lets the stack emit what the
//!   full queue held back. A queue that stays full only makes TCP retransmit later.
//! - Timers: [`MmdsStack::poll`] on the device's 1 s timer drives retransmissions, time-outs
//!   and the per-connection deadline ([`CONN_DEADLINE`]).
//! - The firewall's part: it must know the MMDS address of the interface so that (a) no other
//!   frame to 169.254.169.254 (ICMP, UDP, TCP to another port, which this stack passes on) reaches
//!   the tap when MMDS is enabled on the interface, (b) frames to that address are not counted
//!   against the tenant's rules (they never get there: they are consumed first), and (c) on an
//!   interface without MMDS nothing is consumed and the tenant's rules judge such frames as
//!   any others. Anti-spoofing stays as is: a guest spoofing its source address only gets its
//!   answers sent to the address it claimed, on its own interface; the token is bound to the
//!   interface id, so a token taken on one interface is refused on another.
//!
//! # Bounds
//! [`MAX_CONNECTIONS`] TCP sockets with fixed buffers ([`SOCKET_RX_BYTES`], [`SOCKET_TX_BYTES`])
//! and a fixed request buffer each ([`REQUEST_MAX`]), one frame buffer for input, at most
//! [`TX_QUEUE_FRAMES`] frames of at most 1514 bytes for output, smoltcp's fixed-size
//! neighbour cache. A SYN when no socket listens is answered by smoltcp with an RST and
//! counted ([`MmdsCounters::syn_refused`]). A connection that has not been answered and closed
//! within [`CONN_DEADLINE`] is aborted. Response bodies are bounded by the data store's size
//! limit (set by the API, not the guest). Answers leave with the configured IP TTL (1 by
//! default): sockets set it, and the device stamps it on every IPv4 frame (RSTs included).
//! Connection opens (one request each) pay from the VM's request bucket, every frame from its
//! frame bucket ([`limits`]); a SYN or frame over the limit is dropped and counted
//! ([`MmdsCounters::rate_limited`]).
//!
//! # Audit and metrics
//! Every answered request gives one audit line ([`audit`]: interface, method, path, status,
//! token age; never the token or the answer) at `info` level, within the VM's line budget.
//! The counters are published to the interface's metrics group (`mmds_*` of
//! [`NetDeviceMetrics`]) by the stack itself after each frame and each poll.
//!
//! The HTTP service is [`http`], session tokens are [`token`].

pub mod audit;
pub mod classify;
pub mod device;
pub mod http;
pub mod limits;
pub mod token;

#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use self::classify::{classify, FrameClass};
use self::device::QueueDevice;
pub use self::http::MmdsVersion;
use self::http::{serve, Answer, Parsed, ServiceContext};
pub use self::limits::MmdsLimits;
pub use self::token::{TokenAuthority, TokenKey};
use crate::logger::RateLimitedLog;
use crate::metrics::{Counter, NetDeviceMetrics};

/// TCP connections open at once per interface.
pub const MAX_CONNECTIONS: usize = 8;
/// Receive buffer of each socket.
pub const SOCKET_RX_BYTES: usize = 4096;
/// Send buffer of each socket.
pub const SOCKET_TX_BYTES: usize = 16384;
/// Largest request head; a longer one is answered 400.
pub const REQUEST_MAX: usize = 4096;
/// Frames waiting for the guest at most.
pub const TX_QUEUE_FRAMES: usize = 64;
/// A connection is aborted this long after it opened, answered or not.
pub const CONN_DEADLINE: Duration = Duration::from_secs(10);
/// The MMDS address unless configured (the API's default).
pub use crate::mmds::DEFAULT_IPV4_ADDRESS as DEFAULT_IPV4;
/// The MAC the MMDS address answers ARP with unless configured (locally administered).
pub const DEFAULT_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
/// The IP TTL of answers unless configured (the API's default).
pub use crate::mmds::DEFAULT_HOP_LIMIT;

/// Why a stack could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmdsNetError {
    /// The MAC is multicast or zero.
    #[error("The MMDS MAC address must be unicast and non-zero.")]
    Mac,
    /// The address is not a usable unicast address.
    #[error("The MMDS IPv4 address {0} is not a unicast address.")]
    Address(Ipv4Addr),
    /// A TTL of 0 would make every answer undeliverable.
    #[error("The MMDS hop limit must be between 1 and 255.")]
    HopLimit,
}

/// How one interface's responder is set up.
#[derive(Debug, Clone)]
pub struct MmdsNetConfig {
    /// The interface id (tokens are bound to it).
    pub iface_id: String,
    /// The MMDS address.
    pub ipv4_address: Ipv4Addr,
    /// The MAC that address answers with.
    pub mac: [u8; 6],
    /// Protocol version.
    pub version: MmdsVersion,
    /// Always answer in the IMDS text form.
    pub imds_compat: bool,
    /// IP TTL of answers.
    pub hop_limit: u8,
    /// The VM's request limit and audit-line budget (clones share them: give every
    /// interface of a VM a clone of the same).
    pub limits: MmdsLimits,
}

impl MmdsNetConfig {
    /// Defaults for interface `iface_id`: 169.254.169.254, V2, TTL 1, its own default limits.
    pub fn new(iface_id: &str) -> Self {
        Self {
            iface_id: iface_id.to_string(),
            ipv4_address: DEFAULT_IPV4,
            mac: DEFAULT_MAC,
            version: MmdsVersion::V2,
            imds_compat: false,
            hop_limit: DEFAULT_HOP_LIMIT,
            limits: MmdsLimits::default(),
        }
    }
}

/// What became of a guest frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// MMDS traffic: taken by the stack (answered or dropped); it goes no further.
    Consumed,
    /// Not MMDS traffic: the device passes it on unchanged.
    Pass,
}

/// What the responder counted (published as the `mmds_*` metrics of the interface).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MmdsCounters {
    /// Frames consumed.
    pub frames_in: u64,
    /// Frames handed to the guest.
    pub frames_out: u64,
    /// Consumed frames too big for the input buffer (dropped).
    pub frames_too_big: u64,
    /// TCP fragments to the MMDS address (dropped).
    pub fragments: u64,
    /// SYNs that found no listening socket (smoltcp answers RST).
    pub syn_refused: u64,
    /// SYNs dropped over the VM's request limit, and frames over its frame limit.
    pub rate_limited: u64,
    /// Times the guest-bound queue was full when the stack had a frame.
    pub queue_full: u64,
    /// Answers by class.
    pub answers_ok: u64,
    /// 401 answers.
    pub answers_unauthorized: u64,
    /// Other 4xx/5xx answers.
    pub answers_error: u64,
    /// Connections aborted at their deadline.
    pub deadline_aborts: u64,
}

/// A TCP connection's application state.
#[derive(Debug)]
struct Conn {
    handle: SocketHandle,
    request: Box<[u8]>,
    request_len: usize,
    response: Vec<u8>,
    sent: usize,
    answered: bool,
    opened: Option<Instant>,
}

impl Conn {
    fn reset(&mut self) {
        self.request_len = 0;
        self.response = Vec::new();
        self.sent = 0;
        self.answered = false;
        self.opened = None;
    }
}

/// The MMDS responder of one interface.
pub struct MmdsStack {
    config: MmdsNetConfig,
    tokens: TokenAuthority,
    data: Arc<RwLock<Value>>,
    epoch: Instant,
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    conns: Vec<Conn>,
    counters: MmdsCounters,
    /// Where the counters are published, and what was published so far.
    metrics: Option<Arc<NetDeviceMetrics>>,
    published: MmdsCounters,
    limited_log: RateLimitedLog,
    /// Where audit lines go ([`log_audit_line`] unless a test captures them).
    audit_sink: fn(&str),
}

/// Writes an audit line to the log, at `info` level.
pub fn log_audit_line(line: &str) {
    log::info!("{line}");
}

impl std::fmt::Debug for MmdsStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmdsStack")
            .field("config", &self.config)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn smol_now(epoch: Instant, now: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(now.saturating_duration_since(epoch).as_micros() as i64)
}

impl MmdsStack {
    /// A responder for `config`, answering from `data`, with tokens under the VM's `key`.
    /// `random_seed` seeds TCP sequence numbers and ports (draw it per stack).
    pub fn new(
        config: MmdsNetConfig,
        key: TokenKey,
        data: Arc<RwLock<Value>>,
        random_seed: u64,
        now: Instant,
    ) -> Result<Self, MmdsNetError> {
        let mac = EthernetAddress(config.mac);
        if !mac.is_unicast() {
            return Err(MmdsNetError::Mac);
        }
        let ip = config.ipv4_address;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return Err(MmdsNetError::Address(ip));
        }
        if config.hop_limit == 0 {
            return Err(MmdsNetError::HopLimit);
        }
        let mut device = QueueDevice::new(TX_QUEUE_FRAMES, config.hop_limit);
        let mut iface_config = Config::new(HardwareAddress::Ethernet(mac));
        iface_config.random_seed = random_seed;
        let mut iface = Interface::new(iface_config, &mut device, smol_now(now, now));
        // Prefix 0: every guest address is on-link, so answers go straight back to the MAC
        // the guest's ARP taught (or that an ARP request to the guest learns).
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ip), 0));
        });
        let mut sockets = SocketSet::new(Vec::with_capacity(MAX_CONNECTIONS));
        let mut conns = Vec::with_capacity(MAX_CONNECTIONS);
        for _ in 0..MAX_CONNECTIONS {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; SOCKET_RX_BYTES]),
                tcp::SocketBuffer::new(vec![0; SOCKET_TX_BYTES]),
            );
            socket.set_hop_limit(Some(config.hop_limit));
            socket.set_timeout(Some(smoltcp::time::Duration::from_secs(5)));
            // listen() fails only for port 0 or a socket that is open: neither here.
            let _ = socket.listen(80);
            conns.push(Conn {
                handle: sockets.add(socket),
                request: vec![0; REQUEST_MAX].into_boxed_slice(),
                request_len: 0,
                response: Vec::new(),
                sent: 0,
                answered: false,
                opened: None,
            });
        }
        let tokens = TokenAuthority::new(key, &config.iface_id, now);
        Ok(Self {
            config,
            tokens,
            data,
            epoch: now,
            iface,
            device,
            sockets,
            conns,
            counters: MmdsCounters::default(),
            metrics: None,
            published: MmdsCounters::default(),
            limited_log: RateLimitedLog::new(),
            audit_sink: log_audit_line,
        })
    }

    /// The MMDS address this stack answers on.
    pub fn address(&self) -> Ipv4Addr {
        self.config.ipv4_address
    }

    /// Publishes the counters to `metrics` (the interface's group) from now on.
    pub fn set_metrics(&mut self, metrics: Arc<NetDeviceMetrics>) {
        self.metrics = Some(metrics);
        self.publish();
    }

    /// Sends audit lines to `sink` instead of the log (tests capture them so).
    pub fn set_audit_sink(&mut self, sink: fn(&str)) {
        self.audit_sink = sink;
    }

    /// Adds to the metrics what was counted since the last call.
    fn publish(&mut self) {
        let Some(m) = self.metrics.as_deref() else {
            return;
        };
        let now = self.counters();
        let was = &self.published;
        let pairs: [(&Counter, u64, u64); 9] = [
            (&m.mmds_answers_ok, now.answers_ok, was.answers_ok),
            (
                &m.mmds_answers_unauthorized,
                now.answers_unauthorized,
                was.answers_unauthorized,
            ),
            (&m.mmds_answers_error, now.answers_error, was.answers_error),
            (&m.mmds_rate_limited, now.rate_limited, was.rate_limited),
            (&m.mmds_syn_refused, now.syn_refused, was.syn_refused),
            (
                &m.mmds_deadline_aborts,
                now.deadline_aborts,
                was.deadline_aborts,
            ),
            (&m.mmds_queue_full, now.queue_full, was.queue_full),
            (&m.mmds_fragments, now.fragments, was.fragments),
            (
                &m.mmds_frames_too_big,
                now.frames_too_big,
                was.frames_too_big,
            ),
        ];
        for (counter, now, was) in pairs {
            if now > was {
                counter.add(now - was);
            }
        }
        self.published = now;
    }

    /// The counters so far.
    pub fn counters(&self) -> MmdsCounters {
        let mut c = self.counters.clone();
        c.queue_full = self.device.tx_full;
        c
    }

    /// Takes a frame the guest sent. MMDS traffic is consumed (answers queue up for
    /// [`Self::pop_guest_frame`]); anything else is [`Verdict::Pass`], untouched.
    pub fn handle_guest_frame(&mut self, frame: &[u8], now: Instant) -> Verdict {
        let class = classify(frame, self.config.ipv4_address);
        match class {
            FrameClass::Other => return Verdict::Pass,
            FrameClass::Fragment => {
                self.counters.frames_in += 1;
                self.counters.fragments += 1;
                self.publish();
                return Verdict::Consumed;
            }
            _ if !self.config.limits.admit_frame() => {
                // Over the VM's frame limit: dropped before the stack sees it.
                self.counters.frames_in += 1;
                self.counters.rate_limited += 1;
                self.log_rate_limited("frame");
                self.publish();
                return Verdict::Consumed;
            }
            FrameClass::Tcp { syn: true } if !self.any_listening() => {
                self.counters.syn_refused += 1;
            }
            FrameClass::Tcp { syn: true } if !self.config.limits.admit_request() => {
                // Over the VM's request limit: dropped before the stack sees it.
                self.counters.frames_in += 1;
                self.counters.rate_limited += 1;
                self.log_rate_limited("connection");
                self.publish();
                return Verdict::Consumed;
            }
            _ => {}
        }
        self.counters.frames_in += 1;
        if !self.device.put_rx(frame) {
            self.counters.frames_too_big += 1;
            self.publish();
            return Verdict::Consumed;
        }
        if matches!(class, FrameClass::Tcp { .. }) {
            self.device.set_rx_dst_mac(self.config.mac);
        }
        self.poll(now);
        self.device.clear_rx();
        Verdict::Consumed
    }

    /// A rate-limited warning that the VM's limit dropped a `what`.
    fn log_rate_limited(&self, what: &str) {
        if let Some(n) = self.limited_log.hit() {
            log::warn!(
                "mmds: rate limit reached on {}: {what} dropped ({n} drops so far)",
                self.config.iface_id
            );
        }
    }

    /// The next frame for the guest's RX queue.
    pub fn pop_guest_frame(&mut self) -> Option<Vec<u8>> {
        let frame = self.device.pop_tx();
        if frame.is_some() {
            self.counters.frames_out += 1;
        }
        frame
    }

    /// Frames waiting for the guest.
    pub fn pending_guest_frames(&self) -> usize {
        self.device.tx_len()
    }

    /// Runs the stack: input, timers, HTTP, output.
    pub fn poll(&mut self, now: Instant) {
        let ts = smol_now(self.epoch, now);
        self.iface.poll(ts, &mut self.device, &mut self.sockets);
        self.service(now);
        self.iface.poll(ts, &mut self.device, &mut self.sockets);
        self.publish();
    }

    fn any_listening(&self) -> bool {
        self.conns
            .iter()
            .any(|c| self.sockets.get::<tcp::Socket>(c.handle).is_listening())
    }

    /// The HTTP side of every connection.
    fn service(&mut self, now: Instant) {
        for conn in &mut self.conns {
            let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            match socket.state() {
                tcp::State::Listen => {
                    // An RST in SYN-RECEIVED puts the socket back to LISTEN by itself: the
                    // connection's deadline must not carry over to the next one.
                    if conn.opened.is_some() {
                        conn.reset();
                    }
                    continue;
                }
                tcp::State::Closed | tcp::State::TimeWait => {
                    conn.reset();
                    socket.abort();
                    let _ = socket.listen(80);
                    continue;
                }
                _ => {}
            }
            let opened = *conn.opened.get_or_insert(now);
            if now.saturating_duration_since(opened) >= CONN_DEADLINE {
                self.counters.deadline_aborts += 1;
                socket.abort();
                conn.reset();
                continue;
            }
            if socket.state() == tcp::State::SynReceived {
                continue;
            }
            if !conn.answered {
                let mut fresh = 0;
                if socket.can_recv() {
                    if let Ok(n) = socket.recv_slice(&mut conn.request[conn.request_len..]) {
                        conn.request_len += n;
                        fresh = n;
                    }
                }
                if fresh == 0 {
                    // Nothing new since the last parse: the head is as incomplete as it was
                    // (a guest holding unfinished heads does not make every frame reparse them).
                    if socket.state() == tcp::State::CloseWait {
                        // The peer closed before a whole request: close our side too.
                        socket.close();
                    }
                    continue;
                }
                let answer = {
                    let data = self.data.read().unwrap_or_else(|e| e.into_inner());
                    let ctx = ServiceContext {
                        version: self.config.version,
                        imds_compat: self.config.imds_compat,
                        data: &data,
                        tokens: &self.tokens,
                        now,
                    };
                    match serve(&conn.request[..conn.request_len], &ctx) {
                        Parsed::Answer(answer) => Some(answer),
                        Parsed::Incomplete if conn.request_len == REQUEST_MAX => Some(Answer {
                            bytes: b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 19\r\nConnection: close\r\n\r\nRequest too large.\n"
                                .to_vec(),
                            audit: audit::AuditEntry::unparsed(400),
                        }),
                        Parsed::Incomplete => None,
                    }
                };
                match answer {
                    Some(Answer { bytes, audit }) => {
                        match audit.status {
                            200 => self.counters.answers_ok += 1,
                            401 => self.counters.answers_unauthorized += 1,
                            _ => self.counters.answers_error += 1,
                        }
                        if let Some(suppressed) = self.config.limits.audit_line() {
                            audit.emit(&self.config.iface_id, suppressed, self.audit_sink);
                        }
                        conn.response = bytes;
                        conn.answered = true;
                    }
                    None if socket.state() == tcp::State::CloseWait => {
                        // The peer closed before a whole request: close our side too.
                        socket.close();
                        continue;
                    }
                    None => continue,
                }
            }
            if conn.sent < conn.response.len() && socket.can_send() {
                if let Ok(n) = socket.send_slice(&conn.response[conn.sent..]) {
                    conn.sent += n;
                }
                if conn.sent == conn.response.len() {
                    socket.close();
                    conn.response = Vec::new();
                    conn.sent = 0;
                }
            }
        }
    }
}
