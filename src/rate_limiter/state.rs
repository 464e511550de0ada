//! A rate limiter's state in a snapshot: what each bucket had left (budget and unspent
//! one-time burst) when the VM was saved. The buckets' sizes come from the device's
//! configuration in the same state file; a restored limiter gets the remaining budget back,
//! never more than its configured bucket holds, and refills from the moment of the restore
//! (the time a snapshot spends on disk earns nothing). A limiter is restored unblocked: a
//! bucket that is empty blocks again at the first request, as it would have.

use serde::{Deserialize, Serialize};

use super::{RateLimiter, RateLimiterConfig, TokenBucket, TokenBucketConfig};

/// Why a saved limiter state is refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RateLimiterStateError {
    /// A bucket is saved that is not configured, or a configured one is missing.
    #[error("The saved {0} bucket does not match the configured limiter")]
    Presence(&'static str),
    /// More budget than the bucket holds.
    #[error("The saved {which} budget {budget} exceeds the bucket size {size}")]
    Budget {
        /// `bandwidth` or `ops`.
        which: &'static str,
        /// Saved.
        budget: u64,
        /// Configured.
        size: u64,
    },
    /// More one-time burst than configured.
    #[error("The saved {which} one-time burst {burst} exceeds the configured {configured}")]
    Burst {
        /// `bandwidth` or `ops`.
        which: &'static str,
        /// Saved.
        burst: u64,
        /// Configured.
        configured: u64,
    },
}

/// One bucket's remaining tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketState {
    /// Tokens in the bucket.
    pub budget: u64,
    /// Unspent one-time burst.
    pub one_time_burst: u64,
}

/// A limiter's remaining tokens, per bucket (None: the bucket is not limited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiterState {
    /// Bytes.
    pub bandwidth: Option<BucketState>,
    /// Requests.
    pub ops: Option<BucketState>,
}

impl TokenBucket {
    /// What is left now (earned refill included).
    fn save(&mut self) -> BucketState {
        self.auto_replenish();
        BucketState {
            budget: self.budget,
            one_time_burst: self.one_time_burst,
        }
    }

    /// Checks `state` against this bucket.
    fn check(&self, which: &'static str, state: &BucketState) -> Result<(), RateLimiterStateError> {
        if state.budget > self.size {
            return Err(RateLimiterStateError::Budget {
                which,
                budget: state.budget,
                size: self.size,
            });
        }
        if state.one_time_burst > self.initial_one_time_burst {
            return Err(RateLimiterStateError::Burst {
                which,
                burst: state.one_time_burst,
                configured: self.initial_one_time_burst,
            });
        }
        Ok(())
    }
}

/// Checks one saved bucket against the configured one (both present or both absent).
fn check_bucket(
    which: &'static str,
    bucket: Option<&TokenBucket>,
    state: Option<&BucketState>,
) -> Result<(), RateLimiterStateError> {
    match (bucket, state) {
        (None, None) => Ok(()),
        (Some(bucket), Some(state)) => bucket.check(which, state),
        _ => Err(RateLimiterStateError::Presence(which)),
    }
}

impl RateLimiterState {
    /// Checks the state against a limiter's configuration (as a state file carries it),
    /// without creating the limiter.
    pub fn validate(
        &self,
        config: Option<&RateLimiterConfig>,
    ) -> Result<(), RateLimiterStateError> {
        let bucket = |c: Option<&TokenBucketConfig>| c.and_then(TokenBucket::from_config);
        let config = config.copied().unwrap_or_default();
        check_bucket(
            "bandwidth",
            bucket(config.bandwidth.as_ref()).as_ref(),
            self.bandwidth.as_ref(),
        )?;
        check_bucket(
            "ops",
            bucket(config.ops.as_ref()).as_ref(),
            self.ops.as_ref(),
        )
    }
}

impl RateLimiter {
    /// The remaining tokens of each bucket, to save.
    pub fn save_state(&mut self) -> RateLimiterState {
        RateLimiterState {
            bandwidth: self.bandwidth.as_mut().map(TokenBucket::save),
            ops: self.ops.as_mut().map(TokenBucket::save),
        }
    }

    /// Gives each bucket its saved tokens (checked first: nothing changes when refused);
    /// the buckets refill from now.
    pub fn restore_state(&mut self, state: &RateLimiterState) -> Result<(), RateLimiterStateError> {
        check_bucket(
            "bandwidth",
            self.bandwidth.as_ref(),
            state.bandwidth.as_ref(),
        )?;
        check_bucket("ops", self.ops.as_ref(), state.ops.as_ref())?;
        let now = std::time::Instant::now();
        for (bucket, saved) in [
            (self.bandwidth.as_mut(), state.bandwidth),
            (self.ops.as_mut(), state.ops),
        ] {
            if let (Some(bucket), Some(saved)) = (bucket, saved) {
                bucket.budget = saved.budget;
                bucket.one_time_burst = saved.one_time_burst;
                bucket.last_update = now;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::rate_limiter::TokenType;

    fn config(size: u64, burst: u64) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size,
                one_time_burst: Some(burst),
                refill_time: 3_600_000,
            }),
            ops: None,
        }
    }

    #[test]
    fn a_restored_limiter_has_the_remaining_budget_not_a_full_bucket() {
        let config = config(1000, 100);
        let mut saved = RateLimiter::new(&config).unwrap();
        assert!(saved.consume(700, TokenType::Bytes));
        let state = saved.save_state();
        assert_eq!(
            state.bandwidth,
            Some(BucketState {
                budget: 400,
                one_time_burst: 0
            })
        );
        assert_eq!(state.ops, None);
        state.validate(Some(&config)).unwrap();
        let mut restored = RateLimiter::new(&config).unwrap();
        restored.restore_state(&state).unwrap();
        assert!(restored.consume(400, TokenType::Bytes));
        assert!(
            !restored.consume(1, TokenType::Bytes),
            "no more than was left"
        );
    }

    #[test]
    fn a_budget_or_burst_above_the_configured_bucket_is_refused() {
        let config = config(1000, 100);
        let mut limiter = RateLimiter::new(&config).unwrap();
        let over = RateLimiterState {
            bandwidth: Some(BucketState {
                budget: 1001,
                one_time_burst: 0,
            }),
            ops: None,
        };
        let error = RateLimiterStateError::Budget {
            which: "bandwidth",
            budget: 1001,
            size: 1000,
        };
        assert_eq!(over.validate(Some(&config)), Err(error.clone()));
        assert_eq!(limiter.restore_state(&over), Err(error));
        let burst = RateLimiterState {
            bandwidth: Some(BucketState {
                budget: 0,
                one_time_burst: 101,
            }),
            ops: None,
        };
        assert!(matches!(
            burst.validate(Some(&config)),
            Err(RateLimiterStateError::Burst { burst: 101, .. })
        ));
        assert!(limiter.restore_state(&burst).is_err());
        // Nothing changed: the bucket is still full.
        assert!(limiter.consume(1100, TokenType::Bytes));
    }

    #[test]
    fn a_bucket_saved_but_not_configured_or_configured_but_not_saved_is_refused() {
        let unlimited = RateLimiterState::default();
        let config = config(1000, 0);
        assert_eq!(
            unlimited.validate(Some(&config)),
            Err(RateLimiterStateError::Presence("bandwidth"))
        );
        let extra = RateLimiterState {
            bandwidth: None,
            ops: Some(BucketState::default()),
        };
        assert_eq!(
            extra.validate(None),
            Err(RateLimiterStateError::Presence("ops"))
        );
        let mut limiter = RateLimiter::new(&RateLimiterConfig::default()).unwrap();
        assert!(limiter.restore_state(&extra).is_err());
        limiter.restore_state(&unlimited).unwrap();
        unlimited.validate(None).unwrap();
        // A bucket of size 0 is no bucket: nothing may be saved for it.
        let disabled = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 0,
                one_time_burst: None,
                refill_time: 100,
            }),
            ops: None,
        };
        unlimited.validate(Some(&disabled)).unwrap();
    }
}
