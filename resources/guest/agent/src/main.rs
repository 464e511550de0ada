//! palisade-agent: the Linux test guest's agent (resources/guest/README.md).
//!
//! `palisade-agent [--port PORT]` listens on vsock PORT (default 52) and serves one
//! request per connection (protocol.rs): EXEC, WRITE, READ. At most MAX_CONNECTIONS are
//! served at once (more get an error response); a connection that stalls for
//! IO_TIMEOUT_SECS is dropped.
//!
//! `palisade-agent --stdio` serves one request read from stdin, the response to stdout
//! (inetd style: how the host-side client is tested without a vsock transport).
//!
//! `palisade-agent --connect CID PORT [BYTES]` sends BYTES (default 65536) of a pattern to
//! CID:PORT, reads the echo and prints `sent=N received=N match=yes|no`; exit 0 on match.

mod echo;
mod protocol;
mod serve;
mod slots;
mod vsock;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use slots::Slots;

/// The default listening port.
const DEFAULT_PORT: u32 = 52;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 8;
/// A read or write on a connection that makes no progress for this long fails.
const IO_TIMEOUT_SECS: i64 = 60;
/// Largest echo exchange of `--connect`.
const MAX_ECHO_BYTES: usize = 1 << 30;

/// One line to stderr (the console under init), written at once.
fn log(line: &str) {
    let _ = std::io::stderr().write_all(format!("palisade-agent: {line}\n").as_bytes());
}

fn usage() -> ExitCode {
    log("usage: palisade-agent [--port PORT] | --stdio | --connect CID PORT [BYTES]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] => listen(DEFAULT_PORT),
        ["--port", port] => match port.parse() {
            Ok(port) => listen(port),
            Err(_) => usage(),
        },
        ["--stdio"] => stdio(),
        ["--connect", cid, port, rest @ ..] if rest.len() <= 1 => {
            let bytes = rest.first().map_or(Ok(65536), |b| b.parse::<usize>());
            match (cid.parse(), port.parse(), bytes) {
                (Ok(cid), Ok(port), Ok(bytes)) if bytes <= MAX_ECHO_BYTES => {
                    connect(cid, port, bytes)
                }
                _ => usage(),
            }
        }
        _ => usage(),
    }
}

/// stdin and stdout as one stream.
struct Stdio;

impl std::io::Read for Stdio {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::io::stdin().read(buf)
    }
}

impl Write for Stdio {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

fn stdio() -> ExitCode {
    match serve::serve(&mut Stdio) {
        Ok(s) => {
            log(&format!("stdio {} {}", s.op, s.outcome));
            ExitCode::SUCCESS
        }
        Err(e) => {
            log(&format!("stdio {e}"));
            ExitCode::FAILURE
        }
    }
}

fn connect(cid: u32, port: u32, bytes: usize) -> ExitCode {
    let result = vsock::connect(cid, port).and_then(|s| {
        vsock::set_timeouts(&s, IO_TIMEOUT_SECS)?;
        echo::exchange(s, bytes)
    });
    match result {
        Ok(e) => {
            let verdict = if e.ok() { "yes" } else { "no" };
            let at = e
                .first_mismatch
                .map(|o| format!(" first_mismatch={o}"))
                .unwrap_or_default();
            println!(
                "sent={} received={} match={verdict}{at}",
                e.sent, e.received
            );
            if e.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            println!("error={}", e.to_string().replace(' ', "_"));
            ExitCode::FAILURE
        }
    }
}

fn listen(port: u32) -> ExitCode {
    let listener = match vsock::listen(port, 16) {
        Ok(l) => l,
        Err(e) => {
            log(&format!("cannot listen on vsock port {port}: {e}"));
            return ExitCode::FAILURE;
        }
    };
    log(&format!("listening on vsock port {port}"));
    serve_forever(&listener)
}

fn serve_forever(listener: &OwnedFd) -> ExitCode {
    let slots = Slots::new(MAX_CONNECTIONS);
    loop {
        let (mut stream, cid, peer_port) = match vsock::accept(listener) {
            Ok(c) => c,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log(&format!("accept: {e}"));
                    // Not a synchronisation: keeps a persistent error (EMFILE) from
                    // spinning the CPU.
                    thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
        };
        let Some(slot) = slots.try_acquire() else {
            // The accept loop must not wait on a peer that gives no credit: 1 s at most.
            let _ = vsock::set_timeouts(&stream, 1)
                .and_then(|()| protocol::write_error(&mut stream, "busy: too many connections"));
            log(&format!("{cid}:{peer_port} refused: busy"));
            continue;
        };
        let spawned = thread::Builder::new().spawn(move || {
            let line = match serve::serve_connection(&mut stream, IO_TIMEOUT_SECS) {
                Ok(s) => format!("{cid}:{peer_port} {} {}", s.op, s.outcome),
                Err(e) => format!("{cid}:{peer_port} {e}"),
            };
            log(&line);
            drop(slot);
        });
        if let Err(e) = spawned {
            log(&format!("cannot start a thread: {e}"));
        }
    }
}
