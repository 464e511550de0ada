//! The serial console's output, bounded: a guest decides what it prints, so the bytes the
//! host writes for it (to stdout, a log pipe or a file that fills a disk) pass a byte bucket
//! of [`BURST_BYTES`] refilled at [`BYTES_PER_SEC`]. What the bucket refuses is dropped,
//! counted (`uart.dropped_bytes`) and announced once per episode with a marker line in the
//! output itself, so a reader sees where the console was cut. An output file also has a total
//! (`serial_config::MAX_FILE_BYTES`, marker lines included), and a write the output refuses
//! (a full FIFO: it is non-blocking) is dropped and counted the same way: the guest's UART
//! never waits for the host.

use std::io::Write;
use std::time::Instant;

use crate::metrics::METRICS;

/// Bytes a guest may print at once (a whole Linux boot log fits several times).
pub const BURST_BYTES: u64 = 1 << 20;
/// Bytes per second after the burst.
pub const BYTES_PER_SEC: u64 = 64 << 10;
/// Once output is dropped, it resumes only when this much (or the whole burst, if smaller)
/// has been earned back: one marker line per that many bytes at most, not one per byte.
pub const RESUME_BYTES: u64 = 4096;

/// A byte bucket that takes the time as a parameter, so tests control it.
#[derive(Debug)]
pub struct ByteBucket {
    capacity: u64,
    rate: u64,
    tokens: u64,
    last: Instant,
}

impl ByteBucket {
    /// A full bucket.
    pub fn new(capacity: u64, rate: u64, now: Instant) -> Self {
        Self {
            capacity,
            rate,
            tokens: capacity,
            last: now,
        }
    }

    /// Adds `extra` tokens once (Firecracker's `one_time_burst`), above the capacity.
    pub fn with_credit(mut self, extra: u64) -> Self {
        self.tokens = self.tokens.saturating_add(extra);
        self
    }

    /// The tokens available at `now` (after refilling).
    pub fn available(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.last);
        let refill = (elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64;
        if refill > 0 {
            self.tokens = self
                .tokens
                .max(self.tokens.saturating_add(refill).min(self.capacity));
            self.last = now;
        }
        self.tokens
    }

    /// Tokens to wait for before output resumes after a drop.
    fn resume_at(&self) -> u64 {
        self.capacity.min(RESUME_BYTES)
    }

    /// Takes up to `want` bytes' worth of tokens at `now`; returns how many were granted.
    pub fn take(&mut self, want: u64, now: Instant) -> u64 {
        self.available(now);
        let granted = want.min(self.tokens);
        self.tokens -= granted;
        granted
    }
}

/// A writer that passes what its bucket grants and drops the rest.
pub struct BoundedOutput<W: Write> {
    inner: W,
    bucket: ByteBucket,
    /// Bytes dropped since output last went through.
    dropping: u64,
    /// Bytes still allowed in total, when the output has a total.
    total_left: Option<u64>,
}

const MARKER: &[u8] = b"\n[palisade: serial output over its rate limit, dropping]\n";

impl<W: Write> BoundedOutput<W> {
    /// Bounds `inner` with the default burst and rate.
    pub fn new(inner: W) -> Self {
        Self::with_bucket(
            inner,
            ByteBucket::new(BURST_BYTES, BYTES_PER_SEC, Instant::now()),
        )
    }

    /// Bounds `inner` with `bucket`.
    pub fn with_bucket(inner: W, bucket: ByteBucket) -> Self {
        Self {
            inner,
            bucket,
            dropping: 0,
            total_left: None,
        }
    }

    /// Also stops for good after `total` bytes (marker lines included).
    pub fn with_total(mut self, total: Option<u64>) -> Self {
        self.total_left = total;
        self
    }

    /// Writes as much of `buf` as the output and the total take; returns how much.
    fn put(&mut self, buf: &[u8]) -> usize {
        let allowed = match self.total_left {
            Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let mut done = 0;
        while done < allowed {
            match self.inner.write(&buf[done..allowed]) {
                Ok(0) | Err(_) => break,
                Ok(n) => done += n,
            }
        }
        if let Some(left) = &mut self.total_left {
            *left -= done as u64;
        }
        done
    }

    /// Writes what the bucket grants of `buf` at `now`; always reports the whole buffer as
    /// written (the guest's UART never blocks on the host).
    pub fn write_at(&mut self, buf: &[u8], now: Instant) -> std::io::Result<usize> {
        let held = self.dropping > 0 && self.bucket.available(now) < self.bucket.resume_at();
        let granted = if held {
            0
        } else {
            self.bucket.take(buf.len() as u64, now) as usize
        };
        let written = if granted > 0 {
            self.put(&buf[..granted])
        } else {
            0
        };
        if written > 0 && self.dropping > 0 {
            let dropped = std::mem::take(&mut self.dropping);
            log::warn!("Serial output resumed after {dropped} bytes were dropped");
        }
        let refused = (buf.len() - written) as u64;
        if refused > 0 {
            if self.dropping == 0 {
                // The marker is the host's, not charged to the guest's budget (but to the
                // total, whole or not at all).
                if self
                    .total_left
                    .is_none_or(|left| left >= MARKER.len() as u64)
                {
                    self.put(MARKER);
                }
                let _ = self.inner.flush();
                log::warn!("Serial output over its rate limit or total: dropping");
            }
            self.dropping = self.dropping.saturating_add(refused);
            METRICS.uart.dropped_bytes.add(refused);
        }
        Ok(buf.len())
    }
}

impl<W: Write> Write for BoundedOutput<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_at(buf, Instant::now())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn a_guest_flooding_its_console_is_cut_at_the_burst_then_held_to_the_rate() {
        let t0 = Instant::now();
        let mut out = BoundedOutput::with_bucket(Vec::new(), ByteBucket::new(100, 10, t0));
        let before = METRICS.uart.dropped_bytes.count();
        for _ in 0..1000 {
            assert_eq!(out.write_at(b"x", t0).unwrap(), 1);
        }
        let guest_bytes = |v: &[u8]| v.iter().filter(|&&b| b == b'x').count();
        assert_eq!(guest_bytes(&out.inner), 100);
        let text = String::from_utf8_lossy(&out.inner).to_string();
        assert_eq!(
            text.matches("dropping").count(),
            1,
            "one marker per episode"
        );
        assert!(METRICS.uart.dropped_bytes.count() >= before + 900);
        // One second later: ten bytes earned, not yet enough to resume (the whole burst).
        for _ in 0..1000 {
            out.write_at(b"x", t0 + Duration::from_secs(1)).unwrap();
        }
        assert_eq!(guest_bytes(&out.inner), 100);
        // Ten seconds later: the burst is back; it goes out, then dropping again.
        for _ in 0..1000 {
            out.write_at(b"x", t0 + Duration::from_secs(10)).unwrap();
        }
        assert_eq!(guest_bytes(&out.inner), 200);
        // A long quiet spell refills to the burst, never beyond.
        for _ in 0..1000 {
            out.write_at(b"x", t0 + Duration::from_secs(3600)).unwrap();
        }
        assert_eq!(guest_bytes(&out.inner), 300);
        let text = String::from_utf8_lossy(&out.inner).to_string();
        assert_eq!(text.matches("dropping").count(), 3, "one marker per burst");
    }

    #[test]
    fn an_output_with_a_total_stops_there_for_good_marker_included() {
        let t0 = Instant::now();
        let mut out = BoundedOutput::with_bucket(Vec::new(), ByteBucket::new(1000, 1000, t0))
            .with_total(Some(500));
        let before = METRICS.uart.dropped_bytes.count();
        for i in 0..100u64 {
            out.write_at(&[b'x'; 100], t0 + Duration::from_secs(i))
                .unwrap();
        }
        assert_eq!(out.inner.len(), 500);
        assert!(METRICS.uart.dropped_bytes.count() >= before + 9500);
    }

    /// A writer that takes `room` bytes, then refuses like a full non-blocking FIFO.
    struct Full {
        room: usize,
        got: Vec<u8>,
    }
    impl Write for Full {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.room);
            self.room -= n;
            self.got.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_fifo_drops_and_counts_instead_of_blocking_or_failing_the_guest() {
        let t0 = Instant::now();
        let full = Full {
            room: 10,
            got: Vec::new(),
        };
        let mut out = BoundedOutput::with_bucket(full, ByteBucket::new(1000, 1000, t0));
        let before = METRICS.uart.dropped_bytes.count();
        assert_eq!(out.write_at(&[b'x'; 100], t0).unwrap(), 100);
        assert_eq!(out.inner.got, vec![b'x'; 10]);
        assert!(METRICS.uart.dropped_bytes.count() >= before + 90);
    }
}
