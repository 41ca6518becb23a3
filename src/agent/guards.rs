//! Guards as plain data structures: token buckets, redaction (the bounded result cache is
//! the gate's).
//! Loop detection keys on `tool + canonical(args)` (see [`call_key`]).

use std::time::{Duration, Instant};

use serde_json::Value;

/// The identity of a call for loop detection and caching: tool name and canonical arguments.
pub fn call_key(tool: &str, args: &Value) -> String {
    format!("{tool}\u{1f}{}", crate::tools::canonical_json(args))
}

/// A token bucket: `capacity` tokens, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: f64, per_second: f64) -> Self {
        Self {
            capacity,
            per_second,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_second).min(self.capacity);
        self.last = now;
    }

    /// Takes a token if one is there.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    /// [`TokenBucket::try_take`] at a given instant (for tests).
    pub fn try_take_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is available (zero when one is).
    pub fn wait_time(&mut self) -> Duration {
        self.refill(Instant::now());
        if self.tokens >= 1.0 || self.per_second <= 0.0 {
            Duration::ZERO
        } else {
            // A tiny or NaN rate must not panic: the wait is capped at an hour.
            let secs = (1.0 - self.tokens) / self.per_second;
            Duration::try_from_secs_f64(secs)
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT)
        }
    }
}

/// The longest wait a token bucket reports.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Keys whose values are secrets wherever they appear in tool arguments or results.
const SECRET_KEYS: [&str; 9] = [
    "api_key",
    "apikey",
    "password",
    "secret",
    "token",
    "authorization",
    "card_number",
    "cvv",
    "otp",
];

/// A copy of `value` with secret-looking fields replaced by `"[redacted]"`.
pub fn redact(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    if SECRET_KEYS.iter().any(|s| lower.contains(s)) {
                        (k.clone(), Value::String("[redacted]".into()))
                    } else {
                        (k.clone(), redact(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_call_same_key_whatever_the_key_order() {
        let a = call_key("get_transaction", &json!({"a": 1, "b": {"y": 2, "x": 1}}));
        let b = call_key("get_transaction", &json!({"b": {"x": 1, "y": 2}, "a": 1}));
        assert_eq!(a, b);
        assert_ne!(
            a,
            call_key(
                "get_merchant_account",
                &json!({"a": 1, "b": {"x": 1, "y": 2}})
            )
        );
    }

    #[test]
    fn bucket_empties_and_refills() {
        let mut b = TokenBucket::new(2.0, 1.0);
        let t0 = Instant::now();
        assert!(b.try_take_at(t0));
        assert!(b.try_take_at(t0));
        assert!(!b.try_take_at(t0));
        assert!(b.try_take_at(t0 + Duration::from_millis(1100)));
    }

    #[test]
    fn secrets_are_redacted_recursively() {
        let v = redact(&json!({"api_key": "sk-1", "nested": [{"Password": "p", "ok": 1}]}));
        assert_eq!(
            v,
            json!({"api_key": "[redacted]", "nested": [{"Password": "[redacted]", "ok": 1}]})
        );
    }
}
