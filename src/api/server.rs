//! The api thread: a non-blocking epoll loop over the listening socket and its connections.
//! A slow, silent or malicious client holds only its own connection; every complete request
//! is routed, sent to the VMM thread, answered and audited.

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
use super::http::{self, HttpError, Parsed, Request, Response};
use super::router::{self, route, Routed};
use crate::metrics::METRICS;
use crate::vmm::action::{ActionResult, VmmAction, VmmData};

/// Most connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;
/// A request must be complete this long after its first byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
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
    /// False for a peer whose uid is not allowed: its request gets a 403 and the connection
    /// closes.
    allowed: bool,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    continue_sent: bool,
    request_started: Option<Instant>,
    last_active: Instant,
    closing: bool,
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
            let n = match self.epoll.wait(1000, &mut events) {
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

    fn accept_all(&mut self) {
        loop {
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
            if self.connections.len() >= MAX_CONNECTIONS {
                log::warn!("API connection limit reached; closing a new connection");
                let mut stream = stream;
                let _ =
                    stream.write(&Response::fault(503, "Too many API connections.").to_bytes(true));
                continue;
            }
            if let Err(e) = self.add_connection(stream, peer) {
                log::warn!("Cannot serve an API connection: {e}");
            }
        }
    }

    fn add_connection(&mut self, stream: UnixStream, peer: Peer) -> std::io::Result<()> {
        stream.set_nonblocking(true)?;
        let fd = stream.as_raw_fd();
        let allowed = self.config.allowed_uids.contains(&peer.uid);
        if !allowed {
            METRICS.palisade.api_refused_peers.inc();
            log::warn!(
                "API connection from pid {} uid {} gid {} refused: uid not allowed",
                peer.pid,
                peer.uid,
                peer.gid
            );
        }
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, fd as u64),
        )?;
        self.connections.insert(
            fd,
            Connection {
                stream,
                peer,
                allowed,
                inbuf: Vec::new(),
                outbuf: Vec::new(),
                continue_sent: false,
                request_started: None,
                last_active: Instant::now(),
                closing: false,
            },
        );
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

    /// Reads, answers and writes for one connection. False when the VMM is gone.
    fn serve(&mut self, fd: RawFd) -> bool {
        let Some(mut conn) = self.connections.remove(&fd) else {
            return true;
        };
        let mut alive = true;
        if !conn.closing && conn.outbuf.is_empty() {
            alive = read_available(&mut conn, self.config.max_payload);
        }
        let vmm_ok = self.answer_complete_requests(&mut conn);
        flush(&mut conn);
        if (!alive || conn.closing) && conn.outbuf.is_empty() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        } else {
            let set = if conn.outbuf.is_empty() {
                EventSet::IN | EventSet::READ_HANG_UP
            } else {
                EventSet::OUT
            };
            let _ = self.epoll.ctl(
                ControlOperation::Modify,
                fd,
                EpollEvent::new(set, fd as u64),
            );
            self.connections.insert(fd, conn);
        }
        vmm_ok
    }

    fn answer_complete_requests(&mut self, conn: &mut Connection) -> bool {
        while !conn.closing && conn.outbuf.is_empty() && !conn.inbuf.is_empty() {
            if conn.request_started.is_none() {
                conn.request_started = Some(Instant::now());
            }
            match http::parse(&conn.inbuf, self.config.max_payload, conn.continue_sent) {
                Ok(Parsed::Partial) => break,
                Ok(Parsed::ExpectContinue) => {
                    conn.outbuf.extend_from_slice(http::CONTINUE);
                    conn.continue_sent = true;
                }
                Ok(Parsed::Complete(request, used)) => {
                    conn.inbuf.drain(..used);
                    conn.continue_sent = false;
                    conn.request_started = None;
                    let started = Instant::now();
                    if !conn.allowed {
                        // Read the request before answering, so the client reads the answer.
                        let response = Response::fault(
                            403,
                            &format!(
                                "The caller's uid {} is not allowed to use this API.",
                                conn.peer.uid
                            ),
                        );
                        conn.outbuf.extend_from_slice(&response.to_bytes(true));
                        conn.closing = true;
                        let peer = conn.peer;
                        self.audit(&peer, "refused", &request.method, &request.path, 403, 0);
                        break;
                    }
                    let Some(response) = self.respond(&request) else {
                        return false;
                    };
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
                }
                Err(e) => {
                    self.reject(conn, &e);
                }
            }
        }
        true
    }

    /// Answers a request that cannot be parsed, and closes the connection after it.
    fn reject(&mut self, conn: &mut Connection, e: &HttpError) {
        METRICS.palisade.api_bad_requests.inc();
        log::warn!("Bad API request from pid {}: {e}", conn.peer.pid);
        let response = Response::fault(400, &e.to_string());
        conn.outbuf.extend_from_slice(&response.to_bytes(true));
        conn.inbuf.clear();
        conn.closing = true;
        let peer = conn.peer;
        self.audit(&peer, "request", "", "", 400, 0);
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
            Ok(VmmData::Json(value)) => Response::json(value.to_string()),
            Err(e) => {
                log::warn!("API {} {} failed: {e}", request.method, request.path);
                Response::fault(400, &e.to_string())
            }
        })
    }

    /// Closes connections whose request takes too long to arrive, and long-idle ones.
    fn expire_connections(&mut self) {
        let now = Instant::now();
        let expired: Vec<RawFd> = self
            .connections
            .iter()
            .filter(|(_, c)| {
                c.request_started
                    .is_some_and(|t| now.duration_since(t) > REQUEST_TIMEOUT)
                    || now.duration_since(c.last_active) > IDLE_TIMEOUT
            })
            .map(|(fd, _)| *fd)
            .collect();
        for fd in expired {
            if let Some(mut conn) = self.connections.remove(&fd) {
                log::warn!("API connection from pid {} timed out", conn.peer.pid);
                let _ = conn
                    .stream
                    .write(&Response::fault(400, "Request timed out.").to_bytes(true));
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
        }
    }
}

/// Reads what the socket has; false when the peer closed or failed.
fn read_available(conn: &mut Connection, max_payload: usize) -> bool {
    let limit = http::MAX_HEAD_SIZE + max_payload + 1;
    let mut chunk = [0u8; 4096];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                conn.last_active = Instant::now();
                if conn.request_started.is_none() {
                    conn.request_started = Some(conn.last_active);
                }
                // Never hold more than one maximal request per connection.
                let room = limit.saturating_sub(conn.inbuf.len());
                conn.inbuf.extend_from_slice(&chunk[..n.min(room)]);
                if conn.inbuf.len() >= limit {
                    return true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Writes what is pending without blocking.
fn flush(conn: &mut Connection) {
    while !conn.outbuf.is_empty() {
        match conn.stream.write(&conn.outbuf) {
            Ok(0) => break,
            Ok(n) => {
                conn.outbuf.drain(..n);
                conn.last_active = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => {
                conn.outbuf.clear();
                conn.closing = true;
            }
        }
    }
}
