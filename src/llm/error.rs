//! What can go wrong talking to a chat model. Messages are meant for the person running memex;
//! none of them ever contains the API key (server text is scrubbed before it lands here).

use std::time::Duration;

/// Errors of the LLM client and of the [`ChatModel`](super::ChatModel) seam.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The configuration cannot work (bad base URL, bad header value, ...).
    #[error("LLM configuration error: {0}")]
    Config(String),

    /// The server refused the credentials (HTTP 401/403).
    #[error("the LLM server rejected the API key (HTTP {status}): {message}; check MEMEX_LLM_API_KEY (or GROQ_API_KEY / OPENAI_API_KEY)")]
    Auth {
        /// HTTP status.
        status: u16,
        /// What the server said, with the key scrubbed out.
        message: String,
    },

    /// The server kept answering 429 until the retry budget ran out.
    #[error("the LLM server is rate limiting us (HTTP 429) after {attempts} attempt(s){}: {message}", retry_hint(.retry_after))]
    RateLimited {
        /// How long the server asked us to wait last time, if it said.
        retry_after: Option<Duration>,
        /// Attempts made.
        attempts: u32,
        /// What the server said.
        message: String,
    },

    /// No answer in time: `after` is the time actually spent on the call, every attempt and
    /// wait included (or the overall deadline of a streamed answer).
    #[error("the LLM server did not answer within {:.1} s (after {attempts} attempt(s))", .after.as_secs_f64())]
    Timeout {
        /// The time spent before giving up.
        after: Duration,
        /// Attempts made.
        attempts: u32,
    },

    /// A streamed answer went silent (no bytes at all) for longer than the idle limit.
    #[error("the LLM server's streamed answer stalled: nothing arrived for {:.1} s", .silent.as_secs_f64())]
    Stalled {
        /// How long nothing arrived.
        silent: Duration,
    },

    /// The server failed (HTTP 5xx) until the retry budget ran out.
    #[error("the LLM server failed with HTTP {status} after {attempts} attempt(s): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// What the server said.
        message: String,
    },

    /// The server refused the request itself (HTTP 4xx other than 401/403/429), e.g. an
    /// unknown model or a malformed conversation. Not retried.
    #[error("the LLM server rejected the request (HTTP {status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// What the server said.
        message: String,
    },

    /// The server could not be reached (DNS, refused connection, reset, TLS).
    #[error("cannot reach the LLM server at {url} after {attempts} attempt(s): {message}")]
    Connect {
        /// The URL we tried (never contains credentials).
        url: String,
        /// Attempts made.
        attempts: u32,
        /// What went wrong.
        message: String,
    },

    /// The server answered something that is not a valid chat completion.
    #[error("the LLM server sent an invalid response: {0}")]
    BadResponse(String),

    /// A `ScriptedModel` (feature `test-util`) was asked for more answers than scripted.
    #[error("the scripted model has no response left for request #{0}")]
    ScriptExhausted(usize),
}

fn retry_hint(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(" (server asks to wait {:.1} s)", d.as_secs_f64()),
        None => String::new(),
    }
}

impl LlmError {
    /// Whether trying the same request again may succeed (rate limits, 5xx, timeouts,
    /// connection failures).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LlmError::RateLimited { .. }
                | LlmError::Timeout { .. }
                | LlmError::Server { .. }
                | LlmError::Connect { .. }
        )
    }

    /// Sets the time spent on a [`LlmError::Timeout`] to `elapsed`, the true figure for the
    /// whole call (the per-attempt limit alone would understate it after retries).
    pub(crate) fn spent(mut self, elapsed: Duration) -> Self {
        if let LlmError::Timeout { after, .. } = &mut self {
            *after = elapsed;
        }
        self
    }

    /// Sets the attempt count on the variants that carry one.
    pub(crate) fn with_attempts(mut self, n: u32) -> Self {
        match &mut self {
            LlmError::RateLimited { attempts, .. }
            | LlmError::Timeout { attempts, .. }
            | LlmError::Server { attempts, .. }
            | LlmError::Connect { attempts, .. } => *attempts = n,
            _ => {}
        }
        self
    }
}
