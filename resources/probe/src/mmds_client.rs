//! What the MMDS scenarios share: the server (the MMDS address, resolved by `Session::open`
//! from `probe.peer=169.254.169.254:80`), requests built in a fixed buffer, and the V2 token
//! PUT.

use crate::netstack::Session;
use crate::tcp_client::{self, Exchange, Server};

/// The longest token kept (Palisade's are 80 characters).
pub const TOKEN_MAX: usize = 128;

/// The MMDS server of the session (its peer).
pub fn server(s: &Session) -> Server {
    Server { mac: s.peer_mac, ip: s.params.peer, port: s.params.peer_port }
}

/// A request built piece by piece in a fixed buffer (bytes past its end are dropped).
pub struct Request {
    buf: [u8; 8192],
    len: usize,
}

impl Request {
    pub fn new() -> Self {
        Self { buf: [0; 8192], len: 0 }
    }

    pub fn push(&mut self, bytes: &[u8]) -> &mut Self {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        self
    }

    /// `NAME: VALUE\r\n`.
    pub fn header(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        self.push(name).push(b": ").push(value).push(b"\r\n")
    }

    /// Repeats `byte` `n` times.
    pub fn fill(&mut self, byte: u8, n: usize) -> &mut Self {
        for _ in 0..n {
            self.push(&[byte]);
        }
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A session token, if the PUT was answered 200.
pub struct Token {
    pub status: u16,
    bytes: [u8; TOKEN_MAX],
    len: usize,
}

impl Token {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Sends `request` from `port` and reads the answer (10 s at most).
pub fn ask(s: &mut Session, port: u16, request: &[u8]) -> Option<Exchange> {
    let server = server(s);
    tcp_client::request(s, &server, port, request, 10_000_000).ok().map(|(_, x)| x)
}

/// `PUT /latest/api/token` with a TTL of `ttl` (text) from `port`.
pub fn token(s: &mut Session, port: u16, ttl: &[u8]) -> Token {
    let mut r = Request::new();
    r.push(b"PUT /latest/api/token HTTP/1.1\r\n").header(b"Host", b"169.254.169.254").header(b"X-metadata-token-ttl-seconds", ttl).push(b"\r\n");
    let mut t = Token { status: 0, bytes: [0; TOKEN_MAX], len: 0 };
    if let Some(x) = ask(s, port, r.bytes()) {
        t.status = x.status();
        let body = x.body();
        let body = body.strip_suffix(b"\n").unwrap_or(body);
        t.len = body.len().min(TOKEN_MAX);
        t.bytes[..t.len].copy_from_slice(&body[..t.len]);
    }
    t
}

/// `GET path` with `token` (none if empty) from `port`.
pub fn get(s: &mut Session, port: u16, path: &[u8], token: &[u8]) -> Option<Exchange> {
    let mut r = Request::new();
    r.push(b"GET ").push(path).push(b" HTTP/1.1\r\n").header(b"Host", b"169.254.169.254");
    if !token.is_empty() {
        r.header(b"X-metadata-token", token);
    }
    r.push(b"\r\n");
    ask(s, port, r.bytes())
}
