//! A token bucket: the instance-wide ingest rate limit.

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
        self.try_acquire_n(1)
    }

    /// Takes `n` tokens at once (a batch of `n` events), or says how long until they are there.
    pub fn try_acquire_n(&self, n: u32) -> Result<(), Duration> {
        // A batch larger than the bucket could never pass: it takes the whole bucket instead.
        let n = f64::from(n.max(1)).min(self.burst);
        if self.rate <= 0.0 {
            return Ok(());
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
            Err(Duration::from_secs_f64((n - b.tokens) / self.rate))
        }
    }
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
    fn zero_rate_means_unlimited() {
        let rl = RateLimiter::new(0, 0);
        assert!((0..10_000).all(|_| rl.try_acquire().is_ok()));
    }
}
