//! The api thread: a non-blocking epoll loop over the listening socket and its connections.
//!
//! A slow, silent or malicious client holds only its own connection, and only until its
//! deadline. After every read, every complete request in a connection's buffer is answered,
//! in order; a buffer never holds more than one maximal request, and bytes beyond it stay in
//! the socket until there is room, so none is ever dropped. Peers whose uid is not allowed are
//! answered 403 and closed at accept: they never take a connection slot.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::audit::{loggable_path, utc_now, AuditLog, AuditRecord, Peer};
use super::http::{self, HttpError, Parsed, Request};
use super::response::{self, Response};
use super::router::{self, route, Routed};
use crate::logger::RateLimitedLog;
use crate::metrics::METRICS;
use crate::vmm::action::{ActionResult, VmmAction, VmmData};

/// Most connections of allowed peers served at once; more are answered 503 at accept.
const MAX_CONNECTIONS: usize = 64;
/// A request must be complete this long after its first byte arrived, and a client must
/// take its answers within this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Requests stop being answered while this many answer bytes wait for the client to read
/// them; they are answered once it does.
const OUTPUT_HIGH_WATER: usize = 64 * 1024;
/// An empty input buffer larger than this is given back to the allocator.
const KEPT_BUFFER: usize = 16 * 1024;
/// Buffers read from one connection before the others get their turn.
const READS_PER_TURN: usize = 4;
/// New connections accepted in one turn: the rest wait for the next (the listener is
/// level-triggered), so a peer connecting in a loop cannot keep the thread from its clients.
const ACCEPTS_PER_TURN: usize = 16;
/// Refused peers are all counted and audited; the log gets a bounded share of them.
static REFUSED_LOG: RateLimitedLog = RateLimitedLog::new();
const LISTENER: u64 = u64::MAX;

/// The api thread's end of the VMM channel.
pub struct VmmLink {
    /// Actions to the VMM thread.
    pub requests: Sender<VmmAction>,
    /// Its answers.
    pub responses: Receiver<ActionResult>,
    /// Wakes the VMM thread.
    pub event: EventFd,
}

/// Who may call and what is recorded.
pub struct ServerConfig {
    /// Peer uids allowed to use the API.
    pub allowed_uids: Vec<u32>,
    /// The audit log, if any.
    pub audit: Option<AuditLog>,
    /// Largest request body.
    pub max_payload: usize,
}

struct Connection {
    stream: UnixStream,
    peer: Peer,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    continue_sent: bool,
    /// When the first byte of the request now in `inbuf` arrived.
    request_started: Option<Instant>,
    /// The last read or write.
    last_active: Instant,
    /// The peer shut its side down: answer what is complete, then close.
    peer_closed: bool,
    /// The last answer is queued: close once it is written.
    closing: bool,
}

impl Connection {
    fn new(stream: UnixStream, peer: Peer, now: Instant) -> Self {
        Self {
            stream,
            peer,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            continue_sent: false,
            request_started: None,
            last_active: now,
            peer_closed: false,
            closing: false,
        }
    }

    /// When this connection must be cut if nothing changes.
    fn deadline(&self) -> Instant {
        match self.request_started {
            Some(started) => started + REQUEST_TIMEOUT,
            None if !self.outbuf.is_empty() => self.last_active + REQUEST_TIMEOUT,
            None => self.last_active + IDLE_TIMEOUT,
        }
    }

    /// Whether the connection is over: nothing more will be read and all is written.
    fn finished(&self) -> bool {
        (self.closing || self.peer_closed) && self.outbuf.is_empty()
    }

    /// The events to wait for.
    fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if !self.closing && !self.peer_closed && self.outbuf.len() < OUTPUT_HIGH_WATER {
            set |= EventSet::IN | EventSet::READ_HANG_UP;
        }
        if !self.outbuf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }
}

/// The server state of the api thread.
pub struct ApiServer {
    listener: UnixListener,
    epoll: Epoll,
    connections: HashMap<RawFd, Connection>,
    config: ServerConfig,
    link: VmmLink,
}

fn peer_of(stream: &UnixStream) -> Option<Peer> {
    let cred = getsockopt(stream, PeerCredentials).ok()?;
    Some(Peer {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

impl ApiServer {
    /// A server on an already bound listener.
    pub fn new(
        listener: UnixListener,
        config: ServerConfig,
        link: VmmLink,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )?;
        Ok(Self {
            listener,
            epoll,
            connections: HashMap::new(),
            config,
            link,
        })
    }

    /// Serves until the VMM thread goes away, then parks: the process is ending, and a
    /// thread exit would need syscalls the api filter does not allow.
    pub fn run(&mut self) -> ! {
        self.serve_all();
        loop {
            std::thread::park();
        }
    }

    fn serve_all(&mut self) {
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(self.wait_ms(), &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("API epoll failed: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                if ev.data() == LISTENER {
                    self.accept_all();
                } else if !self.serve(ev.data() as RawFd) {
                    return;
                }
            }
            self.expire_connections();
        }
    }

    /// Milliseconds until the nearest connection deadline (at most a second).
    fn wait_ms(&self) -> i32 {
        let now = Instant::now();
        self.connections
            .values()
            .map(|c| c.deadline().saturating_duration_since(now))
            .min()
            .map_or(1000, |d| d.as_millis().clamp(1, 1000) as i32)
    }

    /// Accepts the connections that wait, at most [`ACCEPTS_PER_TURN`] of them.
    fn accept_all(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("API accept failed: {e}");
                    return;
                }
            };
            METRICS.palisade.api_connections.inc();
            let Some(peer) = peer_of(&stream) else {
                log::warn!("API connection without peer credentials refused");
                continue;
            };
            if !self.config.allowed_uids.contains(&peer.uid) {
                self.refuse(stream, &peer);
                continue;
            }
            if self.connections.len() >= MAX_CONNECTIONS {
                log::warn!("API connection limit reached; closing a new connection");
                let answer = Response::fault(503, "Too many API connections.");
                if stream.set_nonblocking(true).is_ok() {
                    let _ = (&stream).write(&answer.to_bytes(true));
                }
                self.audit(&peer, "refused", "", "", 503, 0);
                continue;
            }
            if let Err(e) = self.add_connection(stream, peer) {
                log::warn!("Cannot serve an API connection: {e}");
            }
        }
    }

    /// Answers a peer whose uid is not allowed with 403, at once, and closes it.
    fn refuse(&mut self, stream: UnixStream, peer: &Peer) {
        METRICS.palisade.api_refused_peers.inc();
        if let Some(n) = REFUSED_LOG.hit() {
            log::warn!(
                "API connection from pid {} uid {} gid {} refused: uid not allowed ({n} so far)",
                peer.pid,
                peer.uid,
                peer.gid
            );
        }
        let answer = Response::fault(
            403,
            &format!(
                "The caller's uid {} is not allowed to use this API.",
                peer.uid
            ),
        );
        // A fresh socket's send buffer holds the whole answer: one write, never blocking.
        if stream.set_nonblocking(true).is_ok() {
            let _ = (&stream).write(&answer.to_bytes(true));
        }
        self.audit(peer, "refused", "", "", 403, 0);
    }

    fn add_connection(&mut self, stream: UnixStream, peer: Peer) -> std::io::Result<()> {
        stream.set_nonblocking(true)?;
        let fd = stream.as_raw_fd();
        let conn = Connection::new(stream, peer, Instant::now());
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(conn.interest(), fd as u64),
        )?;
        self.connections.insert(fd, conn);
        Ok(())
    }

    fn audit(&mut self, peer: &Peer, event: &str, method: &str, path: &str, status: u16, us: u64) {
        let Some(audit) = self.config.audit.as_mut() else {
            return;
        };
        let record = AuditRecord {
            time: utc_now(),
            event,
            peer_pid: peer.pid,
            peer_uid: peer.uid,
            peer_gid: peer.gid,
            method,
            path: loggable_path(path),
            status,
            duration_us: us,
        };
        if audit.write(&record) {
            METRICS.palisade.audit_lines.inc();
        } else {
            METRICS.palisade.audit_lost_lines.inc();
        }
    }

    /// Reads, answers and writes for one connection until none of them makes progress.
    /// False when the VMM is gone.
    fn serve(&mut self, fd: RawFd) -> bool {
        let Some(mut conn) = self.connections.remove(&fd) else {
            return true;
        };
        let limit = http::MAX_HEAD_SIZE + self.config.max_payload + 1;
        let mut reads = 0;
        let vmm_ok = loop {
            // A client that never stops sending gets a few buffers per turn, not the thread;
            // what it sent after them is read on its next turn (epoll is level-triggered).
            let read = if reads < READS_PER_TURN {
                reads += 1;
                read_available(&mut conn, limit)
            } else {
                0
            };
            let Some(answered) = self.answer_complete_requests(&mut conn) else {
                break false;
            };
            let written = flush(&mut conn);
            if read == 0 && answered == 0 && written == 0 {
                break true;
            }
        };
        if conn.inbuf.is_empty() && conn.inbuf.capacity() > KEPT_BUFFER {
            conn.inbuf = Vec::new();
        }
        if conn.finished() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        } else {
            let _ = self.epoll.ctl(
                ControlOperation::Modify,
                fd,
                EpollEvent::new(conn.interest(), fd as u64),
            );
            self.connections.insert(fd, conn);
        }
        vmm_ok
    }

    /// Answers every complete request in the buffer, in order, unless the client is not
    /// reading its answers. The number answered, or None when the VMM is gone.
    fn answer_complete_requests(&mut self, conn: &mut Connection) -> Option<usize> {
        let mut answered = 0;
        while !conn.closing && !conn.inbuf.is_empty() && conn.outbuf.len() < OUTPUT_HIGH_WATER {
            match http::parse(&conn.inbuf, self.config.max_payload, conn.continue_sent) {
                Ok(Parsed::Partial)
                    if conn.inbuf.len() > http::MAX_HEAD_SIZE + self.config.max_payload =>
                {
                    // Unreachable by construction (see http.rs); never wait on a full buffer.
                    self.reject(conn, &HttpError::HeadTooLarge);
                }
                Ok(Parsed::Partial) => break,
                Ok(Parsed::ExpectContinue) => {
                    conn.outbuf.extend_from_slice(response::CONTINUE);
                    conn.continue_sent = true;
                    break;
                }
                Ok(Parsed::Complete(request, used)) => {
                    conn.inbuf.drain(..used);
                    conn.continue_sent = false;
                    // The next request's bytes, if any, are already here.
                    conn.request_started = (!conn.inbuf.is_empty()).then(Instant::now);
                    self.answer(conn, &request)?;
                    answered += 1;
                }
                Err(e) => {
                    self.reject(conn, &e);
                    answered += 1;
                }
            }
        }
        if conn.peer_closed && !conn.closing && conn.outbuf.is_empty() && !conn.inbuf.is_empty() {
            // The peer hung up in the middle of a request: nothing can complete it.
            conn.inbuf.clear();
            conn.request_started = None;
        }
        Some(answered)
    }

    /// Answers one request. None when the VMM is gone.
    fn answer(&mut self, conn: &mut Connection, request: &Request) -> Option<()> {
        let started = Instant::now();
        let response = self.respond(request)?;
        let us = started.elapsed().as_micros() as u64;
        router::count_request(&request.method, &request.path, response.status < 300);
        conn.closing = request.close;
        conn.outbuf
            .extend_from_slice(&response.to_bytes(request.close));
        let peer = conn.peer;
        self.audit(
            &peer,
            "request",
            &request.method,
            &request.path,
            response.status,
            us,
        );
        Some(())
    }

    /// Answers a request that cannot be parsed, and closes the connection after it. The
    /// bytes after it cannot be framed, so they are not read.
    fn reject(&mut self, conn: &mut Connection, e: &HttpError) {
        METRICS.palisade.api_bad_requests.inc();
        log::warn!("Bad API request from pid {}: {e}", conn.peer.pid);
        let response = Response::fault(e.status(), &e.to_string());
        conn.outbuf.extend_from_slice(&response.to_bytes(true));
        conn.inbuf.clear();
        conn.request_started = None;
        conn.closing = true;
        let peer = conn.peer;
        self.audit(&peer, "request", "", "", response.status, 0);
    }

    /// Routes a request and, for actions, asks the VMM thread. None when the VMM is gone.
    fn respond(&mut self, request: &Request) -> Option<Response> {
        let action = match route(request) {
            Routed::Reply(response) => {
                METRICS.palisade.api_bad_requests.inc();
                return Some(response);
            }
            Routed::Action(action) => action,
        };
        log::info!("API {} {}", request.method, loggable_path(&request.path));
        if self.link.requests.send(action).is_err() || self.link.event.write(1).is_err() {
            return None;
        }
        let result = self.link.responses.recv().ok()?;
        Some(match result {
            Ok(VmmData::Empty) => Response::no_content(),
            Ok(data) => match serde_json::to_string(&data) {
                Ok(body) => Response::json(body),
                Err(e) => Response::fault(500, &format!("Cannot serialise the answer: {e}")),
            },
            Err(e) => {
                let message = e.fault_message();
                log::warn!(
                    "API {} {} failed: {message}",
                    request.method,
                    loggable_path(&request.path)
                );
                Response::fault(e.status(), &message)
            }
        })
    }

    /// Closes connections past their deadline: a request not complete in time (answered
    /// 408), answers not taken in time, long idleness.
    fn expire_connections(&mut self) {
        let now = Instant::now();
        let expired: Vec<RawFd> = self
            .connections
            .iter()
            .filter(|(_, c)| c.deadline() <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in expired {
            let Some(mut conn) = self.connections.remove(&fd) else {
                continue;
            };
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            if conn.request_started.is_some() && conn.outbuf.is_empty() {
                log::warn!("API request from pid {} timed out", conn.peer.pid);
                let answer = Response::fault(408, "Request timed out.");
                let _ = conn.stream.write(&answer.to_bytes(true));
                let peer = conn.peer;
                self.audit(&peer, "request", "", "", 408, 0);
            } else {
                log::warn!("API connection from pid {} timed out", conn.peer.pid);
            }
        }
    }
}

/// Reads what the socket has, as long as the buffer has room; the rest stays in the socket.
/// Returns the number of bytes read; a closed or failed peer sets `peer_closed`.
fn read_available(conn: &mut Connection, limit: usize) -> usize {
    if conn.closing || conn.peer_closed || conn.outbuf.len() >= OUTPUT_HIGH_WATER {
        return 0;
    }
    let mut total = 0;
    let mut chunk = [0u8; 4096];
    loop {
        let room = limit.saturating_sub(conn.inbuf.len()).min(chunk.len());
        if room == 0 {
            return total;
        }
        match conn.stream.read(&mut chunk[..room]) {
            Ok(0) => {
                conn.peer_closed = true;
                return total;
            }
            Ok(n) => {
                conn.last_active = Instant::now();
                if conn.request_started.is_none() {
                    conn.request_started = Some(conn.last_active);
                }
                conn.inbuf.extend_from_slice(&chunk[..n]);
                total += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return total,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                conn.peer_closed = true;
                return total;
            }
        }
    }
}

/// Writes what is pending without blocking; returns the number of bytes written.
fn flush(conn: &mut Connection) -> usize {
    let mut total = 0;
    while !conn.outbuf.is_empty() {
        match conn.stream.write(&conn.outbuf) {
            Ok(0) => break,
            Ok(n) => {
                conn.outbuf.drain(..n);
                conn.last_active = Instant::now();
                total += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => {
                conn.outbuf.clear();
                conn.inbuf.clear();
                conn.request_started = None;
                conn.closing = true;
            }
        }
    }
    total
}
