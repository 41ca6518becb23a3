//! Reading how long a server asks us to wait (`retry-after-ms`, `Retry-After` in seconds or as
//! an HTTP date) without ever panicking: every value from the peer is checked and clamped.

use std::time::Duration;

use reqwest::header::HeaderMap;

/// How long the server asks us to wait, from `retry-after-ms` (OpenAI) else `Retry-After`
/// (seconds, possibly fractional, or an HTTP date), clamped to `cap`. Unusable values (NaN,
/// negative, infinite, garbage, non-ASCII) count as absent; a date in the past is zero.
pub fn from_headers(headers: &HeaderMap, cap: Duration) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = get("retry-after-ms").and_then(|v| parse_seconds(v, 1e-3, cap)) {
        return Some(ms);
    }
    parse_retry_after(get("retry-after")?, cap)
}

/// Parses a `Retry-After` value (delay-seconds or HTTP date), clamped to `cap`.
pub fn parse_retry_after(value: &str, cap: Duration) -> Option<Duration> {
    let value = value.trim();
    if let Some(d) = parse_seconds(value, 1.0, cap) {
        return Some(d);
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO).min(cap))
}

/// `value` as a number of units of `unit` seconds, clamped to `cap`; `None` when it is not a
/// finite, non-negative number.
pub fn parse_seconds(value: &str, unit: f64, cap: Duration) -> Option<Duration> {
    let n = value.trim().parse::<f64>().ok()?;
    let secs = n * unit;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    let capped = secs.min(cap.as_secs_f64());
    Some(Duration::try_from_secs_f64(capped).unwrap_or(cap).min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    const CAP: Duration = Duration::from_secs(90);

    #[test]
    fn forms() {
        let mut h = HeaderMap::new();
        assert_eq!(from_headers(&h, CAP), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(from_headers(&h, CAP), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(from_headers(&h, CAP), Some(Duration::from_millis(150)));
        h.insert("retry-after-ms", HeaderValue::from_static("garbage"));
        assert_eq!(from_headers(&h, CAP), Some(Duration::from_secs(2)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(from_headers(&h, CAP), Some(Duration::ZERO));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Fri, 31 Dec 9999 23:59:59 GMT"),
        );
        assert_eq!(from_headers(&h, CAP), Some(CAP));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(from_headers(&h, CAP), None);
    }

    #[test]
    fn hostile_numbers_are_clamped_or_ignored() {
        for v in [
            "1e20",
            "1e25",
            "1e308",
            "18446744073709551616",
            "90.0000001",
        ] {
            assert_eq!(parse_retry_after(v, CAP), Some(CAP), "{v}");
            assert_eq!(parse_seconds(v, 1e-3, CAP).map(|d| d <= CAP), Some(true));
        }
        for v in [
            "NaN", "nan", "-1", "-0.5", "inf", "-inf", "infinity", "", "1e", "0x10",
        ] {
            assert_eq!(parse_seconds(v, 1.0, CAP), None, "{v}");
        }
        assert_eq!(parse_seconds("-0", 1.0, CAP), Some(Duration::ZERO));
        assert_eq!(
            parse_seconds("1", 1.0, Duration::ZERO),
            Some(Duration::ZERO)
        );
    }
}
