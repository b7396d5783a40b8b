//! A token bucket: the instance-wide ingest rate limit, each API key's own, and the limit on
//! requests that fail authentication.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Refills `rate` tokens per second up to `burst`; each request takes one.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl RateLimiter {
    /// A limiter allowing `rate` requests per second with bursts of `burst`; rate 0 disables it.
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            rate: f64::from(rate),
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                refilled_at: Instant::now(),
            }),
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.try_acquire_n(1).map_err(|refusal| match refusal {
            Refusal::Wait(wait) => wait,
            // One token always fits a bucket of at least one.
            Refusal::Never { .. } => Duration::from_secs(1),
        })
    }

    /// Takes `n` tokens at once (a batch of `n` events: one token per event), or says how long
    /// until they are there, or that they never will be (`n` is more than the bucket holds).
    pub fn try_acquire_n(&self, n: u32) -> Result<(), Refusal> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let n = f64::from(n.max(1));
        if n > self.burst {
            return Err(Refusal::Never {
                burst: self.burst as u32,
            });
        }
        // A poisoned lock only means another thread panicked mid-update; the bucket is still
        // two plain numbers, so keep using it.
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(b.refilled_at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.refilled_at = now;
        if b.tokens >= n {
            b.tokens -= n;
            Ok(())
        } else {
            Err(Refusal::Wait(Duration::from_secs_f64((n - b.tokens) / self.rate)))
        }
    }

    /// Gives back `n` tokens taken by a request that another limit then refused.
    pub fn refund(&self, n: u32) {
        if self.rate <= 0.0 {
            return;
        }
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        b.tokens = (b.tokens + f64::from(n)).min(self.burst);
    }
}

/// Why [`RateLimiter::try_acquire_n`] refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// The tokens will be there after this long.
    Wait(Duration),
    /// More tokens than the bucket holds: never, however long the wait.
    Never { burst: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_refuses_with_a_wait() {
        let rl = RateLimiter::new(1, 3);
        for _ in 0..3 {
            assert!(rl.try_acquire().is_ok());
        }
        let wait = rl.try_acquire().unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }

    #[test]
    fn a_batch_takes_one_token_per_event_and_never_more_than_the_bucket() {
        let rl = RateLimiter::new(5, 5);
        assert_eq!(rl.try_acquire_n(6), Err(Refusal::Never { burst: 5 }));
        assert_eq!(rl.try_acquire_n(5), Ok(()));
        assert!(matches!(rl.try_acquire_n(1), Err(Refusal::Wait(_))));
        rl.refund(2);
        assert_eq!(rl.try_acquire_n(2), Ok(()));
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let rl = RateLimiter::new(0, 0);
        assert!((0..10_000).all(|_| rl.try_acquire().is_ok()));
    }
}
