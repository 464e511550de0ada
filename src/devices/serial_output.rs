//! The serial console's output, bounded: a guest decides what it prints, so the bytes the
//! host writes for it (to stdout, a log pipe or a file that fills a disk) pass a byte bucket
//! of [`BURST_BYTES`] refilled at [`BYTES_PER_SEC`]. What the bucket refuses is dropped,
//! counted (`uart.dropped_bytes`) and announced once per episode with a marker line in the
//! output itself, so a reader sees where the console was cut.

use std::io::Write;
use std::time::Instant;

use crate::metrics::METRICS;

/// Bytes a guest may print at once (a whole Linux boot log fits several times).
pub const BURST_BYTES: u64 = 1 << 20;
/// Bytes per second after the burst.
pub const BYTES_PER_SEC: u64 = 64 << 10;

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

    /// Takes up to `want` bytes' worth of tokens at `now`; returns how many were granted.
    pub fn take(&mut self, want: u64, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.last);
        let refill = (elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64;
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(refill).min(self.capacity);
            self.last = now;
        }
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
}

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
        }
    }

    /// Writes what the bucket grants of `buf` at `now`; always reports the whole buffer as
    /// written (the guest's UART never blocks on the host).
    pub fn write_at(&mut self, buf: &[u8], now: Instant) -> std::io::Result<usize> {
        let granted = self.bucket.take(buf.len() as u64, now) as usize;
        if granted > 0 && self.dropping > 0 {
            let dropped = std::mem::take(&mut self.dropping);
            log::warn!("Serial output resumed after {dropped} bytes were dropped");
        }
        if granted > 0 {
            self.inner.write_all(&buf[..granted])?;
        }
        let refused = (buf.len() - granted) as u64;
        if refused > 0 {
            if self.dropping == 0 {
                // The marker is the host's, not charged to the guest.
                let _ = self
                    .inner
                    .write_all(b"\n[palisade: serial output over its rate limit, dropping]\n");
                let _ = self.inner.flush();
                log::warn!("Serial output over its rate limit: dropping");
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
        // One second later: ten more bytes, no more.
        for _ in 0..1000 {
            out.write_at(b"x", t0 + Duration::from_secs(1)).unwrap();
        }
        assert_eq!(guest_bytes(&out.inner), 110);
        // A long quiet spell refills to the burst, never beyond.
        for _ in 0..1000 {
            out.write_at(b"x", t0 + Duration::from_secs(3600)).unwrap();
        }
        assert_eq!(guest_bytes(&out.inner), 210);
    }
}
