//! Client configuration: where the server is, which model, the API key (kept secret), timeouts
//! and the retry policy.

use std::fmt;
use std::time::Duration;

use rand::Rng;

use super::LlmError;

/// Groq's OpenAI-compatible endpoint, the default base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.groq.com/openai/v1";
/// The default model.
pub const DEFAULT_MODEL: &str = "llama-3.3-70b-versatile";

/// Environment variable naming the base URL.
pub const ENV_BASE_URL: &str = "MEMEX_LLM_BASE_URL";
/// Environment variable naming the model.
pub const ENV_MODEL: &str = "MEMEX_LLM_MODEL";
/// Environment variable: seconds allowed for one attempt (`request_timeout`).
pub const ENV_TIMEOUT: &str = "MEMEX_LLM_TIMEOUT";
/// Environment variable: seconds of silence allowed in a streamed answer.
pub const ENV_STREAM_IDLE_TIMEOUT: &str = "MEMEX_LLM_STREAM_IDLE_TIMEOUT";
/// Environment variable: seconds allowed for a whole streamed answer.
pub const ENV_STREAM_TIMEOUT: &str = "MEMEX_LLM_STREAM_TIMEOUT";
/// Environment variable: seconds allowed for a call with all its retries (`max_elapsed`).
pub const ENV_RETRY_BUDGET: &str = "MEMEX_LLM_RETRY_BUDGET";
/// Environment variable: the most completion tokens one call may produce (`max_tokens`; `0`:
/// no cap).
pub const ENV_MAX_TOKENS: &str = "MEMEX_LLM_MAX_TOKENS";
/// The default cap on completion tokens per call: an agent's answer or tool call needs a few
/// hundred; a small local model that rambles stops here instead of at the end of its context.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;
/// The largest cap [`ENV_MAX_TOKENS`] (and `--llm-max-tokens`) may set.
pub const MAX_MAX_TOKENS: u32 = 1_048_576;
/// Longest time any of the timeout variables may ask for, in seconds (one hour).
pub const MAX_TIMEOUT_SECS: f64 = 3600.0;
/// Environment variables holding the API key, in order of preference.
pub const ENV_API_KEYS: [&str; 3] = ["MEMEX_LLM_API_KEY", "GROQ_API_KEY", "OPENAI_API_KEY"];

/// An API key. It cannot be printed: `Debug` shows `ApiKey([redacted])` and there is no
/// `Display`; [`ApiKey::expose`] is the one way to read it (for the `Authorization` header).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// The key itself. Only for building the request header; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Replaces every occurrence of the key in `text` by `[redacted]` (used on server
    /// messages, which sometimes quote the key they rejected).
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_string();
        }
        text.replace(&self.0, "[redacted]")
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

/// How failed calls are retried: exponential backoff with jitter, bounded in count and time.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = never retry).
    pub max_retries: u32,
    /// Wait before the first retry; doubles on each further retry.
    pub initial_backoff: Duration,
    /// Longest computed wait between attempts (a server's `Retry-After` may ask for more).
    pub max_backoff: Duration,
    /// Time budget for the whole call, every attempt and wait included. A wait that would end
    /// past it is not started: the last error is returned instead.
    pub max_elapsed: Duration,
    /// Randomise each computed wait within `[wait/2, wait]` so that clients do not retry in step.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_elapsed: Duration::from_secs(90),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..Default::default()
        }
    }

    /// The computed wait before retry number `retry` (0-based), jitter applied.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(20));
        let full = self
            .initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff);
        if !self.jitter || full.is_zero() {
            return full;
        }
        let half = full / 2;
        let extra = rand::rng().random_range(0..=(full - half).as_micros() as u64);
        half + Duration::from_micros(extra)
    }
}

/// Everything [`OpenAiCompatible`](super::OpenAiCompatible) needs. `Debug` never shows the key.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// Base URL of the OpenAI-compatible API, e.g. `https://api.groq.com/openai/v1` or
    /// `http://localhost:11434/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// Model name sent with every request.
    pub model: String,
    /// API key sent as `Authorization: Bearer ...`; local servers need none.
    pub api_key: Option<ApiKey>,
    /// Time allowed to open the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed for one attempt: the whole answer without streaming, the response headers
    /// with streaming.
    pub request_timeout: Duration,
    /// With streaming, the longest silence allowed between two chunks.
    pub stream_idle_timeout: Duration,
    /// With streaming, the time allowed for the whole answer from the start of the call,
    /// however busy the server keeps the connection (keep-alive comments included).
    pub stream_timeout: Duration,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Ask for usage in streamed answers (`stream_options.include_usage`). Turn off for
    /// servers that reject the field.
    pub stream_usage: bool,
    /// The most completion tokens one call may produce, sent as `max_tokens` with every
    /// request (a request asking for fewer keeps its own number); `None` sends no cap. An
    /// answer cut off there comes back with `finish_reason` `length` and its text so far.
    pub max_tokens: Option<u32>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            base_url: DEFAULT_BASE_URL.to_string(),
            model: DEFAULT_MODEL.to_string(),
            api_key: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(180),
            retry: RetryPolicy::default(),
            stream_usage: true,
            max_tokens: Some(DEFAULT_MAX_TOKENS),
        }
    }
}

impl LlmConfig {
    /// Defaults overridden by the environment: `MEMEX_LLM_BASE_URL`, `MEMEX_LLM_MODEL`, and
    /// the key from `MEMEX_LLM_API_KEY`, else `GROQ_API_KEY`, else `OPENAI_API_KEY`. Empty
    /// variables count as unset.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`LlmConfig::from_env`], and also reads the timeouts from `MEMEX_LLM_TIMEOUT`,
    /// `MEMEX_LLM_STREAM_IDLE_TIMEOUT`, `MEMEX_LLM_STREAM_TIMEOUT` and `MEMEX_LLM_RETRY_BUDGET`
    /// (seconds, `0 < s <= 3600`) and the completion cap from `MEMEX_LLM_MAX_TOKENS` (`0` to
    /// `1048576`, `0`: no cap); a value out of range or not a number is an error.
    pub fn try_from_env() -> Result<Self, LlmError> {
        Self::try_from_lookup(|name| std::env::var(name).ok())
    }

    /// [`LlmConfig::try_from_env`] with a custom variable lookup.
    pub fn try_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, LlmError> {
        let mut config = Self::from_lookup(&lookup);
        let secs = |name: &str| -> Result<Option<Duration>, LlmError> {
            let Some(raw) = lookup(name).filter(|v| !v.trim().is_empty()) else {
                return Ok(None);
            };
            match raw.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 && s <= MAX_TIMEOUT_SECS => {
                    Ok(Some(Duration::from_secs_f64(s)))
                }
                _ => Err(LlmError::Config(format!(
                    "{name} must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECS}, not `{}`",
                    raw.trim().chars().take(40).collect::<String>()
                ))),
            }
        };
        if let Some(d) = secs(ENV_TIMEOUT)? {
            config.request_timeout = d;
        }
        if let Some(d) = secs(ENV_STREAM_IDLE_TIMEOUT)? {
            config.stream_idle_timeout = d;
        }
        if let Some(d) = secs(ENV_STREAM_TIMEOUT)? {
            config.stream_timeout = d;
        }
        if let Some(d) = secs(ENV_RETRY_BUDGET)? {
            config.retry.max_elapsed = d;
        }
        if let Some(raw) = lookup(ENV_MAX_TOKENS).filter(|v| !v.trim().is_empty()) {
            match raw.trim().parse::<u32>() {
                Ok(n) if n <= MAX_MAX_TOKENS => config.max_tokens = (n > 0).then_some(n),
                _ => {
                    return Err(LlmError::Config(format!(
                        "{ENV_MAX_TOKENS} must be a whole number of tokens from 0 (no cap) to {MAX_MAX_TOKENS}, not `{}`",
                        raw.trim().chars().take(40).collect::<String>()
                    )))
                }
            }
        }
        Ok(config)
    }

    /// Like [`LlmConfig::from_env`] with a custom variable lookup (for tests and the CLI).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut config = LlmConfig::default();
        if let Some(url) = get(ENV_BASE_URL) {
            config.base_url = url.trim().to_string();
        }
        if let Some(model) = get(ENV_MODEL) {
            config.model = model.trim().to_string();
        }
        config.api_key = ENV_API_KEYS
            .iter()
            .find_map(|name| get(name))
            .map(|k| ApiKey::new(k.trim()));
        config
    }

    /// Sets the base URL.
    pub fn with_base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// Sets the model.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Sets the API key.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(ApiKey::new(key));
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the connect and per-attempt timeouts.
    pub fn with_timeouts(mut self, connect: Duration, request: Duration) -> Self {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }

    /// Sets the cap on completion tokens per call (`None`: no cap; see
    /// [`LlmConfig::max_tokens`]).
    pub fn with_max_tokens(mut self, max_tokens: Option<u32>) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    /// The `max_tokens` to send for a request asking for `requested`: the smaller of it and
    /// the configured cap.
    pub(crate) fn capped_max_tokens(&self, requested: Option<u32>) -> Option<u32> {
        match (requested, self.max_tokens) {
            (Some(r), Some(cap)) => Some(r.min(cap)),
            (r, cap) => r.or(cap),
        }
    }

    /// Checks the configuration and returns the chat-completions endpoint.
    pub(crate) fn endpoint(&self) -> Result<reqwest::Url, LlmError> {
        let base = self.base_url.trim().trim_end_matches('/');
        let url = reqwest::Url::parse(&format!("{base}/chat/completions")).map_err(|e| {
            LlmError::Config(format!(
                "the base URL `{}` is not a valid URL: {e}",
                redact_userinfo(&self.base_url)
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(LlmError::Config(format!(
                "the base URL must start with http:// or https://, not `{}://`",
                url.scheme()
            )));
        }
        if self.model.trim().is_empty() {
            return Err(LlmError::Config("the model name is empty".into()));
        }
        Ok(url)
    }
}

/// The URL without user name or password, for messages.
pub(crate) fn safe_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

fn redact_userinfo(raw: &str) -> String {
    match (raw.find("://"), raw.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://[redacted]{}", &raw[..scheme_end], &raw[at..])
        }
        _ => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_tokens_defaults_reads_the_environment_and_caps_requests() {
        let none = |_: &str| None;
        let c = LlmConfig::try_from_lookup(none).unwrap();
        assert_eq!(c.max_tokens, Some(DEFAULT_MAX_TOKENS));
        assert_eq!(c.capped_max_tokens(None), Some(DEFAULT_MAX_TOKENS));
        assert_eq!(c.capped_max_tokens(Some(400)), Some(400));
        assert_eq!(c.capped_max_tokens(Some(5000)), Some(DEFAULT_MAX_TOKENS));
        let env = |v: &'static str| move |n: &str| (n == ENV_MAX_TOKENS).then(|| v.to_string());
        assert_eq!(
            LlmConfig::try_from_lookup(env("77")).unwrap().max_tokens,
            Some(77)
        );
        let off = LlmConfig::try_from_lookup(env("0")).unwrap();
        assert_eq!(off.max_tokens, None);
        assert_eq!(off.capped_max_tokens(None), None);
        assert_eq!(off.capped_max_tokens(Some(400)), Some(400));
        for bad in ["-1", "lots", "1048577"] {
            let e = LlmConfig::try_from_lookup(env(bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains(ENV_MAX_TOKENS) && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn key_falls_back_in_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = LlmConfig::from_lookup(env(&[("OPENAI_API_KEY", "o"), ("GROQ_API_KEY", "g")]));
        assert_eq!(c.api_key.unwrap().expose(), "g");
        let c = LlmConfig::from_lookup(env(&[
            ("OPENAI_API_KEY", "o"),
            ("GROQ_API_KEY", "g"),
            ("MEMEX_LLM_API_KEY", "m"),
        ]));
        assert_eq!(c.api_key.unwrap().expose(), "m");
        let c = LlmConfig::from_lookup(env(&[("OPENAI_API_KEY", "o"), ("GROQ_API_KEY", " ")]));
        assert_eq!(c.api_key.unwrap().expose(), "o");
        let c = LlmConfig::from_lookup(env(&[]));
        assert!(c.api_key.is_none());
        assert_eq!(c.base_url, DEFAULT_BASE_URL);
        assert_eq!(c.model, DEFAULT_MODEL);
        let c = LlmConfig::from_lookup(env(&[
            ("MEMEX_LLM_BASE_URL", "http://localhost:11434/v1"),
            ("MEMEX_LLM_MODEL", "qwen2.5"),
        ]));
        assert_eq!(c.base_url, "http://localhost:11434/v1");
        assert_eq!(c.model, "qwen2.5");
    }

    #[test]
    fn timeouts_from_env_are_bounded() {
        let c = LlmConfig::try_from_lookup(|n| match n {
            ENV_TIMEOUT => Some("1.5".into()),
            ENV_STREAM_TIMEOUT => Some("4".into()),
            ENV_RETRY_BUDGET => Some("3".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.stream_timeout, Duration::from_secs(4));
        assert_eq!(c.retry.max_elapsed, Duration::from_secs(3));
        for bad in ["0", "-1", "NaN", "inf", "1e20", "soon"] {
            let err = LlmConfig::try_from_lookup(|n| (n == ENV_TIMEOUT).then(|| bad.to_string()))
                .unwrap_err();
            assert!(err.to_string().contains(ENV_TIMEOUT), "{err}");
        }
    }

    #[test]
    fn debug_redacts_key() {
        let c = LlmConfig::default().with_api_key("gsk_supersecret123");
        let s = format!("{c:?}");
        assert!(!s.contains("supersecret"), "{s}");
        assert!(s.contains("[redacted]"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            jitter: false,
            ..Default::default()
        };
        assert_eq!(p.backoff(0), Duration::from_millis(500));
        assert_eq!(p.backoff(1), Duration::from_millis(1000));
        assert_eq!(p.backoff(10), Duration::from_secs(8));
        let j = RetryPolicy::default();
        for _ in 0..100 {
            let d = j.backoff(2);
            assert!(d >= Duration::from_millis(1000) && d <= Duration::from_millis(2000));
        }
    }

    #[test]
    fn endpoint_is_validated() {
        let c = LlmConfig::default().with_base_url("http://127.0.0.1:1234/v1/");
        assert_eq!(
            c.endpoint().unwrap().as_str(),
            "http://127.0.0.1:1234/v1/chat/completions"
        );
        assert!(matches!(
            LlmConfig::default().with_base_url("not a url").endpoint(),
            Err(LlmError::Config(_))
        ));
        let err = LlmConfig::default()
            .with_base_url("ftp://u:pw@x/")
            .endpoint()
            .unwrap_err();
        assert!(!err.to_string().contains("pw"));
    }
}
