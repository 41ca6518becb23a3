//! Rate limiting: a token bucket per key id (authenticated requests) and per client address
//! (failed authentications).
//!
//! Buckets live in a [`moka`] cache that drops a bucket once it has been idle for as long as
//! a full refill takes: such a bucket is full again, so dropping it is the same as keeping it.
//! A bucket still refilling (a key that exhausted its burst) is never dropped for room — only a
//! hard bound of [`MAX_BUCKETS`] live buckets, far past any real key count, protects memory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

/// Most buckets kept at once (a memory bound; idle buckets go long before it matters).
pub const MAX_BUCKETS: u64 = 1_000_000;

/// Tokens left and when they were last counted.
type Bucket = Arc<Mutex<(f64, Instant)>>;

/// A token bucket per key: `rate` requests per second on average, bursts up to `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Cache<String, Bucket>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("buckets", &self.buckets.entry_count())
            .finish()
    }
}

impl RateLimiter {
    /// A limiter; `rate <= 0` disables limiting.
    pub fn new(rate: f64, burst: f64) -> Self {
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        // An idle bucket is full again after `burst / rate` seconds; keep it a little longer.
        let refill = if rate > 0.0 && rate.is_finite() {
            (burst / rate).clamp(1.0, 86_400.0)
        } else {
            1.0
        };
        RateLimiter {
            rate,
            burst,
            buckets: Cache::builder()
                .max_capacity(MAX_BUCKETS)
                .time_to_idle(Duration::from_secs_f64(refill + 1.0))
                .build(),
        }
    }

    fn bucket(&self, key: &str) -> Bucket {
        let burst = self.burst;
        self.buckets
            .get_with_by_ref(key, || Arc::new(Mutex::new((burst, Instant::now()))))
    }

    /// Takes one token for `key`: `Ok` when allowed, else `Err(seconds to wait)`.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        self.take(key, true)
    }

    /// Whether `key` has a token, without taking it: `Err(seconds to wait)` when it has none.
    pub fn peek(&self, key: &str) -> Result<(), u64> {
        self.take(key, false)
    }

    fn take(&self, key: &str, consume: bool) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let bucket = self.bucket(key);
        let mut guard = match bucket.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (tokens, last) = &mut *guard;
        let now = Instant::now();
        let refill = now.duration_since(*last).as_secs_f64() * self.rate;
        *tokens = (*tokens + refill).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            if consume {
                *tokens -= 1.0;
            }
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }

    /// Buckets held now (after pending evictions are applied).
    pub fn len(&self) -> u64 {
        self.buckets.run_pending_tasks();
        self.buckets.entry_count()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refuses_with_a_wait() {
        let l = RateLimiter::new(1.0, 3.0);
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_ok());
        assert_eq!(l.check("a"), Err(1));
        assert!(l.check("b").is_ok());
        assert!(RateLimiter::new(0.0, 1.0).check("a").is_ok());
    }

    #[test]
    fn peek_takes_nothing() {
        let l = RateLimiter::new(0.001, 2.0);
        assert!(l.peek("a").is_ok());
        assert!(l.peek("a").is_ok());
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_ok());
        assert!(l.peek("a").is_err());
        assert!(l.check("a").is_err());
    }

    /// The old limiter cleared every bucket past 100,000 keys, handing an exhausted key its
    /// whole burst back. Now a key stays exhausted however many other keys come and go.
    #[test]
    fn an_exhausted_key_stays_exhausted_past_100k_other_keys() {
        let l = RateLimiter::new(0.01, 5.0);
        for _ in 0..5 {
            assert!(l.check("victim").is_ok());
        }
        assert!(l.check("victim").is_err());
        for i in 0..120_000u32 {
            let _ = l.check(&format!("k{i}"));
        }
        assert!(l.len() > 100_000, "{}", l.len());
        assert!(
            l.check("victim").is_err(),
            "the exhausted key got its burst back"
        );
    }

    #[test]
    fn idle_full_buckets_are_dropped() {
        let l = RateLimiter::new(1000.0, 1.0);
        for i in 0..100 {
            let _ = l.check(&format!("k{i}"));
        }
        assert_eq!(l.len(), 100);
        // Full again after 1 ms; dropped after the idle time (refill clamped to 1 s, + 1 s).
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(l.len(), 0);
    }
}
