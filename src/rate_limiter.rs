//! Token-bucket rate limiting with Firecracker's semantics, shared by the block, entropy and
//! network devices.
//!
//! A limiter has up to two buckets: `bandwidth` (bytes) and `ops` (requests), each
//! `{size, one_time_burst, refill_time}` with `refill_time` in milliseconds. A bucket refills
//! continuously at `size` tokens per `refill_time`, up to `size`; `one_time_burst` is an extra
//! initial credit spent first and never refilled. When a bucket cannot pay for a request, the
//! device leaves the request in its queue (nothing is dropped), the limiter arms its timerfd,
//! and the device stops processing that queue until the timer fires. A single request larger
//! than the whole bucket is let through once, and the limiter then stays blocked for the time
//! the bucket needs to pay it back.

mod state;

pub use state::{BucketState, RateLimiterState, RateLimiterStateError};

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

/// How long a limiter blocks when a bucket runs dry (Firecracker's refill timer).
pub const REFILL_TIMER: Duration = Duration::from_millis(100);

const NANOS_PER_MILLI: u128 = 1_000_000;

/// Errors of the limiter's timer.
#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    /// The timerfd cannot be created, armed or read.
    #[error("Rate limiter timer failure")]
    Timer(#[source] std::io::Error),
}

/// One bucket of the configuration (`bandwidth` or `ops`), Firecracker's `TokenBucket`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds when full; 0 disables the bucket.
    pub size: u64,
    /// Extra tokens available once, at the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the bucket from empty to full; 0 disables the bucket.
    pub refill_time: u64,
}

/// A device's `rate_limiter` object, Firecracker's `RateLimiter`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

/// What a bucket's `reduce` did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BucketReduction {
    /// Not enough tokens: nothing was taken.
    Failure,
    /// The tokens were taken.
    Success,
    /// The request was larger than the whole bucket: it emptied the bucket and is let through;
    /// the ratio is the unpaid part over the bucket size.
    OverConsumption(f64),
}

/// A token bucket that refills continuously.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBucket {
    size: u64,
    initial_one_time_burst: u64,
    one_time_burst: u64,
    refill_time_ms: u64,
    budget: u64,
    last_update: Instant,
}

impl TokenBucket {
    /// A full bucket; None when `size` or `refill_time_ms` is 0 (no limit).
    pub fn new(size: u64, one_time_burst: u64, refill_time_ms: u64) -> Option<Self> {
        if size == 0 || refill_time_ms == 0 {
            return None;
        }
        Some(Self {
            size,
            initial_one_time_burst: one_time_burst,
            one_time_burst,
            refill_time_ms,
            budget: size,
            last_update: Instant::now(),
        })
    }

    /// A bucket from its configuration; None when it is disabled.
    pub fn from_config(config: &TokenBucketConfig) -> Option<Self> {
        Self::new(
            config.size,
            config.one_time_burst.unwrap_or(0),
            config.refill_time,
        )
    }

    /// The full size.
    #[cfg(test)]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Milliseconds from empty to full.
    pub fn refill_time_ms(&self) -> u64 {
        self.refill_time_ms
    }

    /// Tokens available now (refill not applied).
    #[cfg(test)]
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Unspent one-time burst.
    #[cfg(test)]
    pub fn one_time_burst(&self) -> u64 {
        self.one_time_burst
    }

    /// Tokens that can be taken now without blocking (budget and unspent burst; refill not
    /// applied, so it may under-state).
    pub fn available(&self) -> u64 {
        self.budget.saturating_add(self.one_time_burst)
    }

    /// Adds what the time since the last update has earned, keeping the fraction of a token
    /// not yet earned for the next time.
    fn auto_replenish(&mut self) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last_update).as_nanos();
        let period = u128::from(self.refill_time_ms) * NANOS_PER_MILLI;
        if elapsed >= period {
            self.budget = self.size;
            self.last_update = now;
            return;
        }
        let size = u128::from(self.size);
        let tokens = elapsed * size / period;
        // The time that produced exactly `tokens`, rounded up: the remainder carries over.
        let used = (tokens * period).div_ceil(size);
        self.last_update += Duration::from_nanos(used as u64);
        self.budget = self.budget.saturating_add(tokens as u64).min(self.size);
    }

    /// Takes `tokens`: from the one-time burst first, then from the refilled budget.
    pub fn reduce(&mut self, mut tokens: u64) -> BucketReduction {
        if self.one_time_burst > 0 {
            if self.one_time_burst >= tokens {
                self.one_time_burst -= tokens;
                return BucketReduction::Success;
            }
            tokens -= self.one_time_burst;
            self.one_time_burst = 0;
        }
        if tokens > self.budget {
            self.auto_replenish();
            if tokens > self.size {
                let unpaid = tokens - self.budget;
                self.budget = 0;
                self.last_update = Instant::now();
                return BucketReduction::OverConsumption(unpaid as f64 / self.size as f64);
            }
            if tokens > self.budget {
                return BucketReduction::Failure;
            }
        }
        self.budget -= tokens;
        BucketReduction::Success
    }

    /// Gives back `tokens` taken by a request that did not go ahead.
    pub fn force_replenish(&mut self, tokens: u64) {
        if self.initial_one_time_burst > 0 && self.one_time_burst < self.initial_one_time_burst {
            self.one_time_burst = self
                .one_time_burst
                .saturating_add(tokens)
                .min(self.initial_one_time_burst);
            return;
        }
        self.budget = self.budget.saturating_add(tokens).min(self.size);
    }
}

/// Which bucket a request pays from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    /// `bandwidth`.
    Bytes,
    /// `ops`.
    Ops,
}

/// A change of one bucket (`PATCH /drives/{id}`).
#[derive(Clone, Debug, PartialEq)]
pub enum BucketUpdate {
    /// Keep the bucket as it is.
    None,
    /// Remove the bucket (no limit).
    Disabled,
    /// Replace the bucket.
    Update(TokenBucket),
}

impl BucketUpdate {
    /// Firecracker's rule: an absent bucket is unchanged, a bucket of size or refill time 0
    /// removes the limit, any other replaces it.
    pub fn from_config(config: Option<&TokenBucketConfig>) -> Self {
        match config {
            None => Self::None,
            Some(c) => TokenBucket::from_config(c).map_or(Self::Disabled, Self::Update),
        }
    }
}

/// The limiter of one device: two optional buckets and the timer that unblocks it.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
}

impl RateLimiter {
    /// A limiter for `config` (no limit for absent or disabled buckets).
    pub fn new(config: &RateLimiterConfig) -> Result<Self, RateLimiterError> {
        let timer = TimerFd::new().map_err(|e| RateLimiterError::Timer(e.into()))?;
        fcntl(timer.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|e| RateLimiterError::Timer(e.into()))?;
        Ok(Self {
            bandwidth: config.bandwidth.as_ref().and_then(TokenBucket::from_config),
            ops: config.ops.as_ref().and_then(TokenBucket::from_config),
            timer,
            blocked: false,
        })
    }

    fn bucket_mut(&mut self, kind: TokenType) -> Option<&mut TokenBucket> {
        match kind {
            TokenType::Bytes => self.bandwidth.as_mut(),
            TokenType::Ops => self.ops.as_mut(),
        }
    }

    /// The bucket of `kind`, if limited.
    pub fn bucket(&self, kind: TokenType) -> Option<&TokenBucket> {
        match kind {
            TokenType::Bytes => self.bandwidth.as_ref(),
            TokenType::Ops => self.ops.as_ref(),
        }
    }

    fn block_for(&mut self, duration: Duration) {
        // A zero duration would disarm the timer instead of firing it.
        let duration = duration.max(Duration::from_millis(1));
        match self.timer.reset(duration, None) {
            Ok(()) => self.blocked = true,
            // Without a timer nothing would unblock the device: let requests through.
            Err(e) => log::error!("Cannot arm the rate limiter timer: {e}"),
        }
    }

    /// Pays `tokens` from the bucket of `kind`; false means "not now": the caller keeps the
    /// request and waits for the timer.
    pub fn consume(&mut self, tokens: u64, kind: TokenType) -> bool {
        let Some(bucket) = self.bucket_mut(kind) else {
            return true;
        };
        let refill_ms = bucket.refill_time_ms();
        match bucket.reduce(tokens) {
            BucketReduction::Success => true,
            BucketReduction::Failure => {
                if !self.blocked {
                    self.block_for(REFILL_TIMER);
                }
                false
            }
            BucketReduction::OverConsumption(ratio) => {
                let ms = (ratio * refill_ms as f64).min(u64::MAX as f64) as u64;
                self.block_for(Duration::from_millis(ms));
                true
            }
        }
    }

    /// Returns `tokens` to the bucket of `kind` (a request paid for but not performed).
    pub fn manual_replenish(&mut self, tokens: u64, kind: TokenType) {
        if let Some(bucket) = self.bucket_mut(kind) {
            bucket.force_replenish(tokens);
        }
    }

    /// True while the device must leave its queue alone.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The timer fired: reads it and unblocks. Never waits, also when the timer has not fired
    /// (the timerfd is non-blocking).
    pub fn on_timer(&mut self) -> Result<(), RateLimiterError> {
        match self.timer.wait() {
            Ok(_) => {}
            Err(e) if e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(RateLimiterError::Timer(e.into())),
        }
        self.blocked = false;
        Ok(())
    }

    /// Applies a `PATCH`: each bucket is kept, removed or replaced.
    pub fn update_buckets(&mut self, bytes: BucketUpdate, ops: BucketUpdate) {
        for (slot, update) in [(&mut self.bandwidth, bytes), (&mut self.ops, ops)] {
            match update {
                BucketUpdate::None => {}
                BucketUpdate::Disabled => *slot = None,
                BucketUpdate::Update(bucket) => *slot = Some(bucket),
            }
        }
    }

    /// The buckets as configuration, for `GET /vm/config`.
    pub fn to_config(&self) -> RateLimiterConfig {
        let config = |b: &TokenBucket| TokenBucketConfig {
            size: b.size,
            one_time_burst: (b.initial_one_time_burst > 0).then_some(b.initial_one_time_burst),
            refill_time: b.refill_time_ms,
        };
        RateLimiterConfig {
            bandwidth: self.bandwidth.as_ref().map(config),
            ops: self.ops.as_ref().map(config),
        }
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn limiter(bandwidth: Option<(u64, u64, u64)>, ops: Option<(u64, u64, u64)>) -> RateLimiter {
        let bucket = |(size, burst, refill_time): (u64, u64, u64)| TokenBucketConfig {
            size,
            one_time_burst: Some(burst),
            refill_time,
        };
        RateLimiter::new(&RateLimiterConfig {
            bandwidth: bandwidth.map(bucket),
            ops: ops.map(bucket),
        })
        .unwrap()
    }

    #[test]
    fn zero_size_or_refill_time_means_no_limit() {
        assert!(TokenBucket::new(0, 0, 100).is_none());
        assert!(TokenBucket::new(100, 0, 0).is_none());
        let mut l = limiter(Some((0, 0, 100)), None);
        assert!(l.consume(u64::MAX, TokenType::Bytes));
        assert!(l.consume(u64::MAX, TokenType::Ops));
        assert!(!l.is_blocked());
    }

    #[test]
    fn burst_is_spent_first_then_the_budget() {
        let mut b = TokenBucket::new(1000, 500, 1000).unwrap();
        assert_eq!(b.reduce(400), BucketReduction::Success);
        assert_eq!((b.one_time_burst(), b.budget()), (100, 1000));
        assert_eq!(b.reduce(300), BucketReduction::Success);
        assert_eq!((b.one_time_burst(), b.budget()), (0, 800));
        assert_eq!(b.reduce(900), BucketReduction::Failure);
        assert_eq!(b.budget(), 800, "a failed reduce takes nothing");
    }

    #[test]
    fn an_empty_bucket_blocks_until_the_timer_fires_and_refills_over_time() {
        let mut l = limiter(Some((1000, 0, 100)), None);
        assert!(l.consume(1000, TokenType::Bytes));
        assert!(!l.consume(1, TokenType::Bytes));
        assert!(l.is_blocked());
        std::thread::sleep(Duration::from_millis(120));
        l.on_timer().unwrap();
        assert!(!l.is_blocked());
        assert!(
            l.consume(1000, TokenType::Bytes),
            "refilled after refill_time"
        );
    }

    #[test]
    fn partial_refill_is_proportional_to_elapsed_time() {
        let mut b = TokenBucket::new(1_000_000, 0, 1000).unwrap();
        assert_eq!(b.reduce(1_000_000), BucketReduction::Success);
        std::thread::sleep(Duration::from_millis(100));
        // About 100_000 tokens earned: 50_000 fits, 500_000 does not.
        assert_eq!(b.reduce(50_000), BucketReduction::Success);
        assert_eq!(b.reduce(500_000), BucketReduction::Failure);
        assert!(b.budget() < 200_000);
    }

    #[test]
    fn a_request_larger_than_the_bucket_passes_once_and_blocks_for_its_debt() {
        let mut l = limiter(Some((100, 0, 1000)), None);
        assert!(l.consume(300, TokenType::Bytes));
        assert!(l.is_blocked());
        // Debt of 200 tokens = 2 refill times = 2 s; the timer has not fired yet.
        l.on_timer().unwrap();
        assert!(!l.is_blocked(), "on_timer never waits");
    }

    #[test]
    fn manual_replenish_gives_back_tokens() {
        let mut l = limiter(None, Some((1, 0, 1000)));
        assert!(l.consume(1, TokenType::Ops));
        l.manual_replenish(1, TokenType::Ops);
        assert!(l.consume(1, TokenType::Ops));
        assert!(!l.consume(1, TokenType::Ops));
    }

    #[test]
    fn updates_keep_remove_or_replace_each_bucket() {
        let mut l = limiter(Some((10, 0, 100)), Some((5, 0, 100)));
        let new = TokenBucketConfig {
            size: 99,
            one_time_burst: None,
            refill_time: 7,
        };
        l.update_buckets(
            BucketUpdate::from_config(Some(&new)),
            BucketUpdate::from_config(None),
        );
        assert_eq!(l.bucket(TokenType::Bytes).unwrap().size(), 99);
        assert_eq!(l.bucket(TokenType::Ops).unwrap().size(), 5);
        let zero = TokenBucketConfig {
            size: 0,
            one_time_burst: None,
            refill_time: 100,
        };
        l.update_buckets(BucketUpdate::None, BucketUpdate::from_config(Some(&zero)));
        assert!(l.bucket(TokenType::Ops).is_none());
        assert_eq!(l.to_config().bandwidth.unwrap().refill_time, 7);
    }

    #[test]
    fn config_parses_firecracker_json_and_refuses_unknown_fields() {
        let c: RateLimiterConfig = serde_json::from_str(
            r#"{"bandwidth": {"size": 1048576, "one_time_burst": 0, "refill_time": 100},
                "ops": {"size": 100, "refill_time": 1000}}"#,
        )
        .unwrap();
        assert_eq!(c.bandwidth.unwrap().size, 1 << 20);
        assert_eq!(c.ops.unwrap().one_time_burst, None);
        assert!(serde_json::from_str::<RateLimiterConfig>(r#"{"bw": {}}"#).is_err());
        assert!(serde_json::from_str::<TokenBucketConfig>(r#"{"size": 1}"#).is_err());
    }
}
