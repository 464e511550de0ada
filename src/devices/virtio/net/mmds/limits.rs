//! The per-VM limits that every MMDS interface of a VM shares: the request rate limit
//! (`mmds-config.rate_limiter`, an `ops` token bucket of [`crate::rate_limiter`]) and the
//! budget of audit lines.
//!
//! A request is charged when its connection opens (the guest's SYN): each connection carries
//! one request (the service closes after its answer), so one bucket bounds both connection
//! opens and requests. Over the limit the SYN is dropped and counted, never answered: the VMM
//! spends one bucket check on it (no TCP state, no answer frame), and the guest's TCP retries
//! it after its own backoff (1 s, then 3 s, 7 s ...), by when the bucket has refilled — an
//! honest client that bursts past the limit is delayed, not failed.
//!
//! The frames of the service (ARP, TCP segments) pay from a second bucket, sized from the
//! first: [`FRAMES_PER_REQUEST`] frames per request, over the same refill time (6400 per 2 s
//! by default). A request takes 7 guest frames (about 50 for an answer of 50 KB, the default
//! store limit), so honest traffic never meets it; what it bounds is the stack's work for frames that open nothing
//! (stray segments answered by RST, ARP floods): a frame over it is dropped before the stack
//! sees it and counted as rate limited. Without a request limit there is no frame limit.
//!
//! Audit lines ([`super::audit`]) have their own bucket ([`AUDIT_LINE_BUDGET`]); a line over
//! it is suppressed and counted, and the next line written says how many were.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::rate_limiter::{BucketReduction, RateLimiterConfig, TokenBucket, TokenBucketConfig};

/// Frames of the service allowed per request of the request limit.
pub const FRAMES_PER_REQUEST: u64 = 64;

/// Audit lines per VM: a burst of 100, refilled at one a second (a guest that keeps asking
/// writes at most 86,400 lines a day, under 20 MB, and counts the rest as suppressed).
pub const AUDIT_LINE_BUDGET: TokenBucketConfig = TokenBucketConfig {
    size: 100,
    one_time_burst: None,
    refill_time: 100_000,
};

#[derive(Debug)]
struct Buckets {
    requests: Option<TokenBucket>,
    frames: Option<TokenBucket>,
    lines: Option<TokenBucket>,
    suppressed_lines: u64,
}

/// The VM's MMDS limits; clones share them (one per VM, handed to every interface).
#[derive(Debug, Clone)]
pub struct MmdsLimits(Arc<Mutex<Buckets>>);

impl Default for MmdsLimits {
    /// The default request limit ([`crate::mmds::DEFAULT_RATE_LIMIT`]) and line budget.
    fn default() -> Self {
        Self::new(&crate::mmds::DEFAULT_RATE_LIMIT, &AUDIT_LINE_BUDGET)
    }
}

fn take_one(bucket: &mut Option<TokenBucket>) -> bool {
    match bucket {
        None => true,
        Some(b) => b.reduce(1) != BucketReduction::Failure,
    }
}

impl MmdsLimits {
    /// Limits with the `ops` bucket of `requests` (none: no limit) and `lines` for audit lines.
    pub fn new(requests: &RateLimiterConfig, lines: &TokenBucketConfig) -> Self {
        let ops = requests.ops.as_ref();
        let per = |n: u64| n.saturating_mul(FRAMES_PER_REQUEST);
        Self(Arc::new(Mutex::new(Buckets {
            requests: ops.and_then(TokenBucket::from_config),
            frames: ops.and_then(|r| {
                TokenBucket::new(
                    per(r.size),
                    per(r.one_time_burst.unwrap_or(0)),
                    r.refill_time,
                )
            }),
            lines: TokenBucket::from_config(lines),
            suppressed_lines: 0,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Buckets> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charges one request (a connection about to open); false: over the limit.
    pub fn admit_request(&self) -> bool {
        take_one(&mut self.lock().requests)
    }

    /// Charges one frame of the service; false: over the limit.
    pub fn admit_frame(&self) -> bool {
        take_one(&mut self.lock().frames)
    }

    /// Asks to write one audit line: `Some(n)` with the number of lines suppressed since the
    /// last one written, or `None` (suppressed, and counted for the next).
    pub fn audit_line(&self) -> Option<u64> {
        let mut b = self.lock();
        if take_one(&mut b.lines) {
            Some(std::mem::take(&mut b.suppressed_lines))
        } else {
            b.suppressed_lines += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64) -> TokenBucketConfig {
        // Refills in an hour: nothing comes back while the test runs.
        TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time: 3_600_000,
        }
    }

    #[test]
    fn requests_over_the_shared_bucket_are_refused_by_every_clone() {
        let limits = MmdsLimits::new(
            &RateLimiterConfig {
                bandwidth: None,
                ops: Some(bucket(3)),
            },
            &bucket(1),
        );
        let other = limits.clone();
        assert!(limits.admit_request());
        assert!(other.admit_request());
        assert!(limits.admit_request());
        assert!(!other.admit_request());
        assert!(!limits.admit_request());
    }

    #[test]
    fn frames_are_limited_to_64_per_request_of_the_limit() {
        let limits = MmdsLimits::new(
            &RateLimiterConfig {
                bandwidth: None,
                ops: Some(bucket(3)),
            },
            &bucket(1),
        );
        assert_eq!((0..1000).filter(|_| limits.admit_frame()).count(), 3 * 64);
        // Requests have their own bucket.
        assert!(limits.admit_request());
    }

    #[test]
    fn no_ops_bucket_is_no_limit() {
        let limits = MmdsLimits::new(&RateLimiterConfig::default(), &bucket(1));
        assert!((0..10_000).all(|_| limits.admit_request() && limits.admit_frame()));
    }

    #[test]
    fn the_audit_budget_is_a_burst_of_100_then_one_line_a_second() {
        let limits = MmdsLimits::new(&RateLimiterConfig::default(), &AUDIT_LINE_BUDGET);
        assert!((0..100).all(|_| limits.audit_line() == Some(0)));
        assert_eq!(limits.audit_line(), None, "the 101st at once is suppressed");
        // The bucket refills its 100 lines over refill_time: one line per 1000 ms.
        assert_eq!(AUDIT_LINE_BUDGET.refill_time / AUDIT_LINE_BUDGET.size, 1000);
    }

    #[test]
    fn suppressed_audit_lines_are_counted_in_the_next_one() {
        let limits = MmdsLimits::new(&RateLimiterConfig::default(), &bucket(2));
        assert_eq!(limits.audit_line(), Some(0));
        assert_eq!(limits.audit_line(), Some(0));
        assert_eq!(limits.audit_line(), None);
        assert_eq!(limits.audit_line(), None);
        // The bucket gives one back: the line says two were suppressed before it.
        limits.lock().lines = TokenBucket::from_config(&bucket(1));
        assert_eq!(limits.audit_line(), Some(2));
    }
}
