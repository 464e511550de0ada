//! `--connect CID PORT [BYTES]`: the guest-initiated direction of the `vsock` check. Sends
//! BYTES bytes of a fixed pattern and reads until BYTES came back (or EOF), comparing them
//! with what was sent (the host end is an echo server). No half-close: Firecracker records
//! a guest's SHUT_WR without passing an EOF to the host socket, so the echo server must
//! echo as it reads and the guest must not wait for its EOF.

use std::fs::File;
use std::io::{self, Read, Write};
use std::thread;

/// Byte `i` of the pattern: not periodic at any power of two, so a shifted, dropped or
/// repeated chunk shows.
pub fn pattern(i: usize) -> u8 {
    (i % 251) as u8 ^ ((i / 251) % 256) as u8
}

/// The outcome of one echo exchange.
pub struct Echo {
    pub sent: usize,
    pub received: usize,
    /// Offset of the first byte that differs from the pattern (None: all matched).
    pub first_mismatch: Option<usize>,
}

impl Echo {
    /// All bytes came back, in order, unchanged.
    pub fn ok(&self) -> bool {
        self.received == self.sent && self.first_mismatch.is_none()
    }
}

/// Sends `bytes` of the pattern on `stream` and checks the echo.
pub fn exchange(stream: File, bytes: usize) -> io::Result<Echo> {
    let mut writer = stream.try_clone()?;
    // Write from a thread: the echo may come back while we still send.
    let sender = thread::spawn(move || -> io::Result<usize> {
        let mut buf = [0u8; 8192];
        let mut sent = 0;
        while sent < bytes {
            let n = buf.len().min(bytes - sent);
            for (k, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(sent + k);
            }
            writer.write_all(&buf[..n])?;
            sent += n;
        }
        Ok(sent)
    });
    let mut reader = stream;
    let mut buf = [0u8; 8192];
    let mut received = 0usize;
    let mut first_mismatch = None;
    while received < bytes {
        let want = buf.len().min(bytes - received);
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if first_mismatch.is_none() {
            first_mismatch = buf[..n]
                .iter()
                .enumerate()
                .find(|(k, b)| **b != pattern(received + k))
                .map(|(k, _)| received + k);
        }
        received += n;
    }
    let sent = sender
        .join()
        .map_err(|_| io::Error::other("sender thread failed"))??;
    Ok(Echo {
        sent,
        received,
        first_mismatch,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn pattern_differs_between_blocks_of_256_and_4096() {
        assert!((0..4096).any(|i| pattern(i) != pattern(i + 256)));
        assert!((0..4096).any(|i| pattern(i) != pattern(i + 4096)));
    }

    fn pair_with_peer(peer: impl FnOnce(UnixStream) + Send + 'static) -> File {
        let (ours, theirs) = UnixStream::pair().unwrap();
        thread::spawn(move || peer(theirs));
        File::from(std::os::fd::OwnedFd::from(ours))
    }

    #[test]
    fn an_echo_that_never_closes_completes_after_the_last_byte() {
        let stream = pair_with_peer(|mut s| {
            let mut r = s.try_clone().unwrap();
            let mut buf = [0u8; 4096];
            let mut total = 0;
            while total < 100_000 {
                let n = r.read(&mut buf).unwrap();
                s.write_all(&buf[..n]).unwrap();
                total += n;
            }
            // Holds the connection open, like Firecracker after a guest SHUT_WR.
            std::thread::park();
        });
        let echo = exchange(stream, 100_000).unwrap();
        assert!(echo.ok());
    }

    #[test]
    fn a_faithful_echo_of_a_megabyte_matches() {
        let stream = pair_with_peer(|mut s| {
            let mut r = s.try_clone().unwrap();
            io::copy(&mut r, &mut s).unwrap();
        });
        let echo = exchange(stream, 1 << 20).unwrap();
        assert_eq!((echo.sent, echo.received), (1 << 20, 1 << 20));
        assert!(echo.ok());
    }

    #[test]
    fn a_corrupted_byte_and_a_short_echo_are_reported() {
        let stream = pair_with_peer(|mut s| {
            let mut data = vec![0u8; 10_000];
            s.read_exact(&mut data).unwrap();
            data[5000] ^= 1;
            s.write_all(&data).unwrap();
        });
        let echo = exchange(stream, 10_000).unwrap();
        assert_eq!(echo.first_mismatch, Some(5000));
        assert!(!echo.ok());

        let stream = pair_with_peer(|mut s| {
            let mut data = vec![0u8; 10_000];
            s.read_exact(&mut data).unwrap();
            s.write_all(&data[..9000]).unwrap();
        });
        let echo = exchange(stream, 10_000).unwrap();
        assert_eq!((echo.received, echo.first_mismatch), (9000, None));
        assert!(!echo.ok());
    }
}
