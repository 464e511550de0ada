//! The agent's wire protocol: one request and one response per connection, little-endian
//! integers and length-prefixed byte strings ("frames"), every length bounded before any
//! byte of it is read (README.md beside build.sh documents it for host clients).
//!
//! ```text
//! frame    := u32 len, len bytes
//! request  := frame(op) body
//!   op "EXEC":  u32 argc (1..=256), argc x frame(arg), frame(stdin)
//!   op "WRITE": frame(path), u32 mode (permission bits, & 0o7777), frame(data)
//!   op "READ":  frame(path)
//! response := u8 status, then
//!   status 1 (error): frame(message, UTF-8)
//!   status 0, EXEC:   i32 exit (the exit code; -N when killed by signal N),
//!                     u8 truncated (bit 0: stdout, bit 1: stderr cut at 16 MiB),
//!                     frame(stdout), frame(stderr)
//!   status 0, WRITE:  u64 bytes written
//!   status 0, READ:   frame(data)
//! ```

use std::fmt;
use std::io::{self, Read, Write};

/// Largest frame: a file's contents, stdin, stdout or stderr.
pub const MAX_DATA: u32 = 16 << 20;
/// Largest path.
pub const MAX_PATH: u32 = 4096;
/// Largest operation name.
pub const MAX_OP: u32 = 16;
/// Most arguments of an EXEC (argv[0] included).
pub const MAX_ARGS: u32 = 256;
/// Most bytes of all arguments of an EXEC together.
pub const MAX_ARGV_BYTES: u32 = 1 << 20;

/// Response status: success.
pub const STATUS_OK: u8 = 0;
/// Response status: error, a message follows.
pub const STATUS_ERR: u8 = 1;

/// A request, fully read and checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Run argv[0] (looked up in PATH) with the arguments and stdin; return its exit code
    /// and output.
    Exec { argv: Vec<Vec<u8>>, stdin: Vec<u8> },
    /// Create or replace the file at `path` with `data`, permissions `mode`.
    Write {
        path: Vec<u8>,
        mode: u32,
        data: Vec<u8>,
    },
    /// Return the contents of the file at `path`.
    Read { path: Vec<u8> },
}

impl Request {
    /// The operation name, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Exec { .. } => "EXEC",
            Request::Write { .. } => "WRITE",
            Request::Read { .. } => "READ",
        }
    }
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum ProtocolError {
    /// The connection failed or ended before the request was complete.
    Io(io::Error),
    /// A length field above its bound.
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    /// An operation name this agent does not know.
    UnknownOp(String),
    /// An EXEC without arguments.
    NoArgs,
    /// A path or argument containing a NUL byte.
    Nul(&'static str),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Io(e) => write!(f, "Incomplete request: {e}"),
            ProtocolError::TooLarge { what, len, max } => {
                write!(f, "{what} too large: {len} bytes (at most {max})")
            }
            ProtocolError::UnknownOp(op) => write!(f, "Unknown operation {op:?}"),
            ProtocolError::NoArgs => write!(f, "EXEC needs at least one argument"),
            ProtocolError::Nul(what) => write!(f, "{what} contains a NUL byte"),
        }
    }
}

impl From<io::Error> for ProtocolError {
    fn from(e: io::Error) -> Self {
        ProtocolError::Io(e)
    }
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Reads one frame of at most `max` bytes. The buffer grows with the bytes that actually
/// arrive, so a length field alone reserves nothing.
fn read_frame(r: &mut impl Read, what: &'static str, max: u32) -> Result<Vec<u8>, ProtocolError> {
    let len = read_u32(r)?;
    if len > max {
        return Err(ProtocolError::TooLarge {
            what,
            len: len.into(),
            max: max.into(),
        });
    }
    let mut buf = Vec::new();
    r.take(len.into()).read_to_end(&mut buf)?;
    if buf.len() != len as usize {
        return Err(ProtocolError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(buf)
}

fn no_nul(bytes: Vec<u8>, what: &'static str) -> Result<Vec<u8>, ProtocolError> {
    if bytes.contains(&0) {
        return Err(ProtocolError::Nul(what));
    }
    Ok(bytes)
}

/// Reads and checks one request.
pub fn read_request(r: &mut impl Read) -> Result<Request, ProtocolError> {
    let op = read_frame(r, "operation name", MAX_OP)?;
    match op.as_slice() {
        b"EXEC" => {
            let argc = read_u32(r)?;
            if argc == 0 {
                return Err(ProtocolError::NoArgs);
            }
            if argc > MAX_ARGS {
                return Err(ProtocolError::TooLarge {
                    what: "argument count",
                    len: argc.into(),
                    max: MAX_ARGS.into(),
                });
            }
            let mut argv = Vec::new();
            let mut left = MAX_ARGV_BYTES;
            for _ in 0..argc {
                let arg = read_frame(r, "arguments", left)?;
                // read_frame bounds arg.len() by `left`.
                left -= arg.len() as u32;
                argv.push(no_nul(arg, "argument")?);
            }
            let stdin = read_frame(r, "stdin", MAX_DATA)?;
            Ok(Request::Exec { argv, stdin })
        }
        b"WRITE" => {
            let path = no_nul(read_frame(r, "path", MAX_PATH)?, "path")?;
            let mode = read_u32(r)? & 0o7777;
            let data = read_frame(r, "data", MAX_DATA)?;
            Ok(Request::Write { path, mode, data })
        }
        b"READ" => {
            let path = no_nul(read_frame(r, "path", MAX_PATH)?, "path")?;
            Ok(Request::Read { path })
        }
        other => Err(ProtocolError::UnknownOp(
            String::from_utf8_lossy(other).into_owned(),
        )),
    }
}

/// Writes one frame; `data` must be at most u32::MAX bytes (every caller bounds it).
pub fn write_frame(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(data)
}

/// The response to a failed request.
pub fn write_error(w: &mut impl Write, message: &str) -> io::Result<()> {
    w.write_all(&[STATUS_ERR])?;
    write_frame(w, message.as_bytes())?;
    w.flush()
}

/// What an EXEC returns.
#[derive(Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code, or -N when the command was killed by signal N.
    pub exit: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// The response to a successful EXEC.
pub fn write_exec(w: &mut impl Write, out: &ExecOutput) -> io::Result<()> {
    let flags = u8::from(out.stdout_truncated) | (u8::from(out.stderr_truncated) << 1);
    w.write_all(&[STATUS_OK])?;
    w.write_all(&out.exit.to_le_bytes())?;
    w.write_all(&[flags])?;
    write_frame(w, &out.stdout)?;
    write_frame(w, &out.stderr)?;
    w.flush()
}

/// The response to a successful WRITE.
pub fn write_written(w: &mut impl Write, bytes: u64) -> io::Result<()> {
    w.write_all(&[STATUS_OK])?;
    w.write_all(&bytes.to_le_bytes())?;
    w.flush()
}

/// The response to a successful READ.
pub fn write_data(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    w.write_all(&[STATUS_OK])?;
    write_frame(w, data)?;
    w.flush()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;

    fn frame(out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }

    #[test]
    fn exec_request_round_trips_argv_and_stdin() {
        let mut req = Vec::new();
        frame(&mut req, b"EXEC");
        req.extend_from_slice(&2u32.to_le_bytes());
        frame(&mut req, b"cat");
        frame(&mut req, b"-");
        frame(&mut req, b"in");
        let got = read_request(&mut req.as_slice()).unwrap();
        assert_eq!(
            got,
            Request::Exec {
                argv: vec![b"cat".to_vec(), b"-".to_vec()],
                stdin: b"in".to_vec()
            }
        );
    }

    #[test]
    fn write_request_masks_mode_to_permission_bits() {
        let mut req = Vec::new();
        frame(&mut req, b"WRITE");
        frame(&mut req, b"/tmp/x");
        req.extend_from_slice(&0o170755u32.to_le_bytes());
        frame(&mut req, b"data");
        match read_request(&mut req.as_slice()).unwrap() {
            Request::Write { mode, data, .. } => {
                assert_eq!(mode, 0o755);
                assert_eq!(data, b"data");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_data_length_is_refused_before_reading_it() {
        let mut req = Vec::new();
        frame(&mut req, b"WRITE");
        frame(&mut req, b"/tmp/x");
        req.extend_from_slice(&0u32.to_le_bytes());
        req.extend_from_slice(&(MAX_DATA + 1).to_le_bytes());
        let err = read_request(&mut req.as_slice()).unwrap_err();
        assert!(
            matches!(err, ProtocolError::TooLarge { what: "data", .. }),
            "{err}"
        );
    }

    #[test]
    fn huge_length_with_few_bytes_is_an_eof_not_an_allocation() {
        let mut req = Vec::new();
        frame(&mut req, b"READ");
        req.extend_from_slice(&MAX_PATH.to_le_bytes());
        req.extend_from_slice(b"/tmp");
        let err = read_request(&mut req.as_slice()).unwrap_err();
        assert!(matches!(err, ProtocolError::Io(_)), "{err}");
    }

    #[test]
    fn argv_total_is_bounded_across_arguments() {
        let mut req = Vec::new();
        frame(&mut req, b"EXEC");
        req.extend_from_slice(&3u32.to_le_bytes());
        let half = vec![b'a'; (MAX_ARGV_BYTES / 2) as usize];
        frame(&mut req, &half);
        frame(&mut req, &half);
        frame(&mut req, b"x");
        let err = read_request(&mut req.as_slice()).unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::TooLarge {
                    what: "arguments",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn argument_count_zero_and_too_many_are_refused() {
        for argc in [0u32, MAX_ARGS + 1, u32::MAX] {
            let mut req = Vec::new();
            frame(&mut req, b"EXEC");
            req.extend_from_slice(&argc.to_le_bytes());
            assert!(read_request(&mut req.as_slice()).is_err(), "argc {argc}");
        }
    }

    #[test]
    fn unknown_op_long_op_and_nul_in_path_are_refused() {
        let mut req = Vec::new();
        frame(&mut req, b"DELETE");
        assert!(matches!(
            read_request(&mut req.as_slice()),
            Err(ProtocolError::UnknownOp(_))
        ));
        let mut req = Vec::new();
        frame(&mut req, &[b'A'; 17]);
        assert!(matches!(
            read_request(&mut req.as_slice()),
            Err(ProtocolError::TooLarge { .. })
        ));
        let mut req = Vec::new();
        frame(&mut req, b"READ");
        frame(&mut req, b"/etc\0/passwd");
        assert!(matches!(
            read_request(&mut req.as_slice()),
            Err(ProtocolError::Nul("path"))
        ));
    }

    #[test]
    fn every_truncation_of_a_valid_request_is_an_error_not_a_panic() {
        let mut req = Vec::new();
        frame(&mut req, b"EXEC");
        req.extend_from_slice(&2u32.to_le_bytes());
        frame(&mut req, b"sh");
        frame(&mut req, b"-c");
        frame(&mut req, b"stdin");
        for cut in 0..req.len() {
            assert!(read_request(&mut &req[..cut]).is_err(), "cut at {cut}");
        }
        assert!(read_request(&mut req.as_slice()).is_ok());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator (xorshift) over short inputs.
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let len = (s % 48) as usize;
            let mut buf = Vec::with_capacity(len);
            let mut t = s;
            for _ in 0..len {
                t ^= t << 13;
                t ^= t >> 7;
                t ^= t << 17;
                buf.push((t % 7) as u8);
            }
            if let Some(b) = buf.get_mut(0) {
                *b %= 6;
            }
            let _ = read_request(&mut buf.as_slice());
        }
    }
}
