//! The host side of the handshakes: the listener on `uds_path` (host-initiated connections),
//! a host client's `CONNECT <port>\n` line, and the non-blocking connect to
//! `<uds_path>_<port>` for guest-initiated ones.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Instant;

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

/// The longest `CONNECT <port>\n` line (with room for spaces): a longer one is garbage.
pub const MAX_CONNECT_LINE: usize = 32;

/// Why the listener cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Something that is not a socket is in the way.
    #[error("'{0}' exists and is not a socket")]
    NotASocket(String),
    /// unlink, bind or listen failed.
    #[error("Cannot listen on '{path}'")]
    Bind {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Binds the non-blocking listener at `path`, replacing a stale socket left there (as
/// Firecracker does); refuses to remove anything that is not a socket.
pub fn bind_listener(path: &Path) -> Result<UnixListener, ListenerError> {
    let shown = || path.display().to_string();
    let bind_err = |source| ListenerError::Bind {
        path: shown(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(bind_err)?;
        }
        Ok(_) => return Err(ListenerError::NotASocket(shown())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// Connects to the listener at `path` without blocking (a full backlog fails at once).
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    connect(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
    Ok(UnixStream::from(fd))
}

/// What a host client's line said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    /// Not complete yet.
    Partial,
    /// `CONNECT <port>`.
    Connect(u32),
    /// Anything else, or the client went away.
    Garbage,
}

/// Parses a complete line (without its `\n`): `CONNECT <port>`, the word in any case.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split_ascii_whitespace();
    let (verb, port) = (words.next()?, words.next()?);
    if words.next().is_some() || !verb.eq_ignore_ascii_case("connect") {
        return None;
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// A host client that connected to the listener and has not finished its line.
pub struct HostClient {
    /// Its socket.
    pub stream: UnixStream,
    /// When it was accepted (its line is due [`super::muxer::CONNECT_TIMEOUT`] later).
    pub accepted: Instant,
    line: [u8; MAX_CONNECT_LINE],
    len: usize,
}

impl HostClient {
    /// A client just accepted.
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            accepted: Instant::now(),
            line: [0; MAX_CONNECT_LINE],
            len: 0,
        }
    }

    /// Reads the line byte by byte (so nothing after the `\n` is consumed: it is the first
    /// data of the connection), at most [`MAX_CONNECT_LINE`] bytes.
    pub fn read_line(&mut self) -> Line {
        loop {
            let mut byte = [0u8; 1];
            match self.stream.read(&mut byte) {
                Ok(0) => return Line::Garbage,
                Ok(_) if byte[0] == b'\n' => {
                    return parse_connect(&self.line[..self.len])
                        .map_or(Line::Garbage, Line::Connect);
                }
                Ok(_) => {
                    let Some(slot) = self.line.get_mut(self.len) else {
                        return Line::Garbage;
                    };
                    *slot = byte[0];
                    self.len += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Line::Partial,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Line::Garbage,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    #[test]
    fn connect_lines_parse_and_garbage_does_not() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"connect 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT -1",
            b"CONNECT 4294967296",
            b"CONNECT 5 6",
            b"OPEN 5",
            b"CONNECT +5",
            b"\xff\xfe 5",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_line_without_end_is_garbage_after_a_bounded_number_of_bytes() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut client = HostClient::new(a);
        b.write_all(b"CONNECT").unwrap();
        assert_eq!(client.read_line(), Line::Partial);
        b.write_all(b" 52\nhello").unwrap();
        assert_eq!(client.read_line(), Line::Connect(52));
        let mut rest = [0u8; 5];
        client.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"hello", "data after the line is left for the guest");

        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut client = HostClient::new(a);
        b.write_all(&[b'x'; 4096]).unwrap();
        assert_eq!(client.read_line(), Line::Garbage);
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_regular_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        drop(bind_listener(&path).unwrap());
        let _listener = bind_listener(&path).unwrap();
        let _client = connect_nonblocking(&path).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep").unwrap();
        assert!(matches!(
            bind_listener(&file),
            Err(ListenerError::NotASocket(_))
        ));
        assert!(connect_nonblocking(&dir.path().join("none")).is_err());
    }
}
