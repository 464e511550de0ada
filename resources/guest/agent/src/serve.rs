//! Serves one connection: reads a request (protocol.rs), carries it out, writes the
//! response. Generic over the stream so that tests drive it over a socketpair.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::thread;

use crate::protocol::{self, ExecOutput, ProtocolError, Request, MAX_DATA};
use crate::vsock;

/// Why a connection ended without a complete exchange.
#[derive(Debug)]
pub enum ServeError {
    /// The request was malformed or incomplete (an error response was attempted).
    Protocol(ProtocolError),
    /// The response could not be sent.
    Reply(io::Error),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Protocol(e) => write!(f, "Bad request: {e}"),
            ServeError::Reply(e) => write!(f, "Cannot send the response: {e}"),
        }
    }
}

/// What one served request did, for the log line.
pub struct Served {
    pub op: &'static str,
    /// "exit N", "N bytes" or "error: ...".
    pub outcome: String,
}

/// Serves one vsock connection: a read or write that makes no progress for
/// `timeout_secs` fails (a peer that stalls or gives no credit frees its slot).
pub fn serve_connection(stream: &mut fs::File, timeout_secs: i64) -> Result<Served, ServeError> {
    vsock::set_timeouts(stream, timeout_secs).map_err(ServeError::Reply)?;
    serve(stream)
}

/// Reads one request from `stream`, runs it and answers.
pub fn serve(stream: &mut (impl Read + Write)) -> Result<Served, ServeError> {
    let request = match protocol::read_request(stream) {
        Ok(r) => r,
        Err(e) => {
            // Best effort: the peer may be gone already.
            let _ = protocol::write_error(stream, &e.to_string());
            return Err(ServeError::Protocol(e));
        }
    };
    let op = request.op();
    let sent = match run(request) {
        Ok(Reply::Exec(out)) => {
            protocol::write_exec(stream, &out).map(|()| format!("exit {}", out.exit))
        }
        Ok(Reply::Written(n)) => protocol::write_written(stream, n).map(|()| format!("{n} bytes")),
        Ok(Reply::Data(data)) => {
            protocol::write_data(stream, &data).map(|()| format!("{} bytes", data.len()))
        }
        Err(message) => {
            protocol::write_error(stream, &message).map(|()| format!("error: {message}"))
        }
    };
    sent.map(|outcome| Served { op, outcome })
        .map_err(ServeError::Reply)
}

enum Reply {
    Exec(ExecOutput),
    Written(u64),
    Data(Vec<u8>),
}

fn run(request: Request) -> Result<Reply, String> {
    match request {
        Request::Exec { argv, stdin } => exec(&argv, stdin).map(Reply::Exec),
        Request::Write { path, mode, data } => write_file(&path, mode, &data).map(Reply::Written),
        Request::Read { path } => read_file(&path).map(Reply::Data),
    }
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// Opens without blocking (a FIFO without a peer would hold this connection's thread
/// forever: a write-only open fails with ENXIO instead, a read-only one reads EOF), then
/// makes the descriptor blocking again for the transfer.
fn open_nonblocking(options: &mut OpenOptions, path: &OsStr) -> io::Result<fs::File> {
    let file = options.custom_flags(libc::O_NONBLOCK).open(path)?;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; F_GETFL takes no argument, returns an int.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl on a descriptor we own; F_SETFL takes a plain int.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

fn write_file(path: &[u8], mode: u32, data: &[u8]) -> Result<u64, String> {
    let path = os(path);
    let show = || path.to_string_lossy().into_owned();
    let mut file = open_nonblocking(
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode),
        path,
    )
    .map_err(|e| format!("open {}: {e}", show()))?;
    file.write_all(data)
        .map_err(|e| format!("write {}: {e}", show()))?;
    // An existing file keeps its mode through open(): set it (not for FIFOs and devices).
    if file.metadata().map(|m| m.is_file()).unwrap_or(false) {
        fs::set_permissions(path, Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", show()))?;
    }
    Ok(data.len() as u64)
}

fn read_file(path: &[u8]) -> Result<Vec<u8>, String> {
    let path = os(path);
    let show = || path.to_string_lossy().into_owned();
    let file = open_nonblocking(OpenOptions::new().read(true), path)
        .map_err(|e| format!("open {}: {e}", show()))?;
    let mut data = Vec::new();
    file.take(u64::from(MAX_DATA) + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("read {}: {e}", show()))?;
    if data.len() > MAX_DATA as usize {
        return Err(format!("{}: larger than {MAX_DATA} bytes", show()));
    }
    Ok(data)
}

/// Reads `r` to its end, keeping the first MAX_DATA bytes (the rest is drained so that
/// the child never blocks on a full pipe). Returns (bytes, truncated).
fn capture(mut r: impl Read) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = (MAX_DATA as usize).saturating_sub(kept.len());
                let take = n.min(room);
                kept.extend_from_slice(&buf[..take]);
                truncated |= take < n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (kept, truncated)
}

fn exec(argv: &[Vec<u8>], stdin: Vec<u8>) -> Result<ExecOutput, String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| "EXEC needs at least one argument".to_string())?;
    let mut child = Command::new(os(program))
        .args(args.iter().map(|a| os(a)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("exec {}: {e}", os(program).to_string_lossy()))?;
    let feeder = child.stdin.take().map(|mut pipe| {
        thread::spawn(move || {
            // A command that does not read its stdin closes the pipe: not an error.
            let _ = pipe.write_all(&stdin);
        })
    });
    let err_reader = child
        .stderr
        .take()
        .map(|pipe| thread::spawn(move || capture(pipe)));
    let (stdout, stdout_truncated) = match child.stdout.take() {
        Some(pipe) => capture(pipe),
        None => (Vec::new(), false),
    };
    let (stderr, stderr_truncated) = err_reader
        .and_then(|h| h.join().ok())
        .unwrap_or((Vec::new(), false));
    if let Some(h) = feeder {
        let _ = h.join();
    }
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let exit = status
        .code()
        .or_else(|| status.signal().map(|s| -s))
        .unwrap_or(-1);
    Ok(ExecOutput {
        exit,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn frame(out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }

    /// Sends `request` over a socketpair to `serve` in a thread; returns the raw response.
    fn exchange(request: &[u8]) -> Vec<u8> {
        let (mut host, mut agent) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || {
            let _ = serve(&mut agent);
        });
        host.write_all(request).unwrap();
        host.shutdown(std::net::Shutdown::Write).unwrap();
        let mut response = Vec::new();
        host.read_to_end(&mut response).unwrap();
        server.join().unwrap();
        response
    }

    fn take_frame(r: &mut &[u8]) -> Vec<u8> {
        let len = u32::from_le_bytes(r[..4].try_into().unwrap()) as usize;
        let data = r[4..4 + len].to_vec();
        *r = &r[4 + len..];
        data
    }

    fn exec_request(argv: &[&[u8]], stdin: &[u8]) -> Vec<u8> {
        let mut req = Vec::new();
        frame(&mut req, b"EXEC");
        req.extend_from_slice(&(argv.len() as u32).to_le_bytes());
        for a in argv {
            frame(&mut req, a);
        }
        frame(&mut req, stdin);
        req
    }

    #[test]
    fn exec_returns_exit_code_stdout_and_stderr() {
        let req = exec_request(
            &[b"sh", b"-c", b"cat; echo to-stderr >&2; exit 7"],
            b"from-stdin",
        );
        let resp = exchange(&req);
        let mut r = resp.as_slice();
        assert_eq!(r[0], protocol::STATUS_OK);
        assert_eq!(i32::from_le_bytes(r[1..5].try_into().unwrap()), 7);
        assert_eq!(r[5], 0, "nothing truncated");
        r = &r[6..];
        assert_eq!(take_frame(&mut r), b"from-stdin");
        assert_eq!(take_frame(&mut r), b"to-stderr\n");
        assert!(r.is_empty());
    }

    #[test]
    fn exec_of_a_missing_program_is_an_error_response() {
        let resp = exchange(&exec_request(&[b"/nonexistent/program"], b""));
        assert_eq!(resp[0], protocol::STATUS_ERR);
        let mut r = &resp[1..];
        let msg = String::from_utf8(take_frame(&mut r)).unwrap();
        assert!(msg.contains("/nonexistent/program"), "{msg}");
    }

    #[test]
    fn exec_killed_by_signal_reports_minus_the_signal() {
        let resp = exchange(&exec_request(&[b"sh", b"-c", b"kill -9 $$"], b""));
        assert_eq!(resp[0], protocol::STATUS_OK);
        assert_eq!(i32::from_le_bytes(resp[1..5].try_into().unwrap()), -9);
    }

    #[test]
    fn write_then_read_returns_the_same_bytes_and_mode() {
        let dir = std::env::temp_dir().join(format!("palisade-agent-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("file");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();

        let mut req = Vec::new();
        frame(&mut req, b"WRITE");
        frame(&mut req, path.as_os_str().as_bytes());
        req.extend_from_slice(&0o640u32.to_le_bytes());
        frame(&mut req, &data);
        let resp = exchange(&req);
        assert_eq!(resp[0], protocol::STATUS_OK);
        assert_eq!(u64::from_le_bytes(resp[1..9].try_into().unwrap()), 100_000);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);

        let mut req = Vec::new();
        frame(&mut req, b"READ");
        frame(&mut req, path.as_os_str().as_bytes());
        let resp = exchange(&req);
        assert_eq!(resp[0], protocol::STATUS_OK);
        let mut r = &resp[1..];
        assert_eq!(take_frame(&mut r), data);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fifo_without_peer_neither_blocks_write_nor_read() {
        let dir = std::env::temp_dir().join(format!("palisade-agent-fifo-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = write_file(fifo.as_os_str().as_bytes(), 0o600, b"x").unwrap_err();
        assert!(err.contains("open"), "{err}");
        assert_eq!(read_file(fifo.as_os_str().as_bytes()).unwrap(), b"");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_of_a_missing_file_is_an_error_response() {
        let mut req = Vec::new();
        frame(&mut req, b"READ");
        frame(&mut req, b"/nonexistent/file");
        let resp = exchange(&req);
        assert_eq!(resp[0], protocol::STATUS_ERR);
    }

    #[test]
    fn malformed_request_gets_an_error_response_and_runs_nothing() {
        let mut req = Vec::new();
        frame(&mut req, b"EXEC");
        req.extend_from_slice(&u32::MAX.to_le_bytes());
        let resp = exchange(&req);
        assert_eq!(resp[0], protocol::STATUS_ERR);
        let mut r = &resp[1..];
        let msg = String::from_utf8(take_frame(&mut r)).unwrap();
        assert!(msg.contains("argument count too large"), "{msg}");
    }

    #[test]
    fn a_peer_that_stalls_mid_request_is_dropped_after_the_timeout() {
        let (mut host, agent) = UnixStream::pair().unwrap();
        let mut req = Vec::new();
        frame(&mut req, b"WRITE");
        req.extend_from_slice(&100u32.to_le_bytes()); // a path of 100 bytes, never sent
        host.write_all(&req).unwrap();
        let mut agent = fs::File::from(std::os::fd::OwnedFd::from(agent));
        let start = std::time::Instant::now();
        let err = serve_connection(&mut agent, 1).err().unwrap();
        assert!(
            matches!(err, ServeError::Protocol(ProtocolError::Io(_))),
            "{err}"
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        drop(host);
    }

    #[test]
    fn capture_keeps_the_first_max_bytes_and_flags_the_rest() {
        let big = vec![b'z'; MAX_DATA as usize + 10];
        let (kept, truncated) = capture(big.as_slice());
        assert_eq!(kept.len(), MAX_DATA as usize);
        assert!(truncated);
        let (kept, truncated) = capture(&b"small"[..]);
        assert_eq!(kept, b"small");
        assert!(!truncated);
    }
}
