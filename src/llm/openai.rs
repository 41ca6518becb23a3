//! [`OpenAiCompatible`]: the chat-completions client for Groq, OpenAI, Ollama, vLLM, llama.cpp's
//! server and anything else that speaks the same protocol.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::{BoxStream, Stream, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use super::config::safe_url;
use super::retry_after;
use super::sse::{SseParser, StreamAssembler};
use super::wire::{body_message, parse_response, WireRequest};
use super::{
    ChatModel, ChatRequest, ChatResponse, LlmConfig, LlmError, StreamEvent, UsageMeter, UsageTotals,
};

/// A chat model behind an OpenAI-compatible HTTP API.
///
/// Every call is retried on 429, 5xx, timeouts and connection failures with exponential backoff
/// and jitter (honouring `Retry-After`), within [`RetryPolicy`](super::RetryPolicy)'s count and
/// time budget. Usage is recorded per call; [`OpenAiCompatible::usage_totals`] sums it. The API
/// key is only ever written into the `Authorization` header (marked sensitive); errors and
/// `Debug` never show it.
pub struct OpenAiCompatible {
    http: reqwest::Client,
    config: LlmConfig,
    endpoint: reqwest::Url,
    display_url: String,
    meter: Arc<UsageMeter>,
}

impl fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("endpoint", &self.display_url)
            .field("model", &self.config.model)
            .field(
                "api_key",
                &self.config.api_key.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// What one successful attempt produced.
enum Sent {
    Parsed(ChatResponse),
    Stream(reqwest::Response),
}

/// A failed attempt: the error and the wait the server asked for, if any.
type AttemptError = (LlmError, Option<Duration>);

impl OpenAiCompatible {
    /// A client for `config`. Fails only on an unusable configuration (bad URL, empty model).
    pub fn new(config: LlmConfig) -> Result<Self, LlmError> {
        let endpoint = config.endpoint()?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| LlmError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(OpenAiCompatible {
            http,
            display_url: safe_url(&endpoint),
            endpoint,
            config,
            meter: Arc::new(UsageMeter::default()),
        })
    }

    /// A client configured from the environment ([`LlmConfig::from_env`]).
    pub fn from_env() -> Result<Self, LlmError> {
        Self::new(LlmConfig::from_env())
    }

    /// The configuration in use.
    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// Calls made and tokens used since this client was created.
    pub fn usage_totals(&self) -> UsageTotals {
        self.meter.totals()
    }

    /// The exact JSON body this client sends for `request` (for audit logs and debugging; it
    /// never contains the API key, which travels in a header).
    pub fn request_body(&self, request: &ChatRequest, stream: bool) -> Result<Vec<u8>, LlmError> {
        self.encode(request, stream)
    }

    fn encode(&self, request: &ChatRequest, stream: bool) -> Result<Vec<u8>, LlmError> {
        let wire = WireRequest::new(
            request,
            &self.config.model,
            stream,
            self.config.stream_usage,
            self.config.capped_max_tokens(request.max_tokens),
        );
        serde_json::to_vec(&wire)
            .map_err(|e| LlmError::Config(format!("the request cannot be encoded as JSON: {e}")))
    }

    /// Logs an answer cut off by `max_tokens` (or the context): its text is still the answer,
    /// but whoever reads it should know why it stops short.
    fn warn_if_cut_off(&self, finish_reason: &super::FinishReason) {
        if *finish_reason == super::FinishReason::Length {
            tracing::warn!(
                target: "memex::llm",
                max_tokens = self.config.max_tokens,
                "the model's answer was cut off at its token limit (finish_reason `length`); \
                 the text so far is used (raise --llm-max-tokens for longer answers)"
            );
        }
    }

    fn scrub(&self, text: &str) -> String {
        match &self.config.api_key {
            Some(key) => key.scrub(text),
            None => text.to_string(),
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> LlmError {
        if e.is_timeout() && !e.is_connect() {
            return LlmError::Timeout {
                after: self.config.request_timeout,
                attempts: 1,
            };
        }
        let e = e.without_url();
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        LlmError::Connect {
            url: self.display_url.clone(),
            attempts: 1,
            message: self.scrub(&message),
        }
    }

    async fn attempt(&self, body: &[u8], stream: bool) -> Result<Sent, AttemptError> {
        let mut req = self
            .http
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(
                ACCEPT,
                if stream {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            )
            .body(body.to_vec());
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key.expose());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| (self.transport_error(e), None))?;
        let status = resp.status();
        if status.is_success() {
            let json_body = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            // Some servers ignore `stream: true` and answer a whole completion: accept it.
            if stream && !json_body {
                return Ok(Sent::Stream(resp));
            }
            let (bytes, complete) = read_capped(resp, MAX_ANSWER_BYTES)
                .await
                .map_err(|e| (self.transport_error(e), None))?;
            if !complete {
                return Err((
                    LlmError::BadResponse(format!(
                        "the answer is longer than {MAX_ANSWER_BYTES} bytes"
                    )),
                    None,
                ));
            }
            return parse_response(&bytes)
                .map(Sent::Parsed)
                .map_err(|e| (e, None));
        }
        let retry_after = retry_after::from_headers(resp.headers(), self.config.retry.max_elapsed);
        // Only the start of an error body is read: it is a message for people.
        let body = read_capped(resp, MAX_ERROR_BODY_BYTES)
            .await
            .map(|(b, _)| b)
            .unwrap_or_default();
        let message = self.scrub(&body_message(&body));
        let status = status.as_u16();
        let err = match status {
            401 | 403 => LlmError::Auth { status, message },
            429 => LlmError::RateLimited {
                retry_after,
                attempts: 1,
                message,
            },
            408 => LlmError::Timeout {
                after: self.config.request_timeout,
                attempts: 1,
            },
            s if s >= 500 => LlmError::Server {
                status,
                attempts: 1,
                message,
            },
            _ => LlmError::Rejected { status, message },
        };
        Err((err, retry_after))
    }

    /// Sends `body`, retrying as the policy allows.
    async fn send(&self, body: &[u8], stream: bool) -> Result<Sent, LlmError> {
        let policy = &self.config.retry;
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let remaining = policy.max_elapsed.saturating_sub(started.elapsed());
            let limit = self
                .config
                .request_timeout
                .min(remaining.max(Duration::from_millis(1)));
            let outcome = match tokio::time::timeout(limit, self.attempt(body, stream)).await {
                Ok(r) => r,
                Err(_) => Err((
                    LlmError::Timeout {
                        after: limit,
                        attempts: 1,
                    },
                    None,
                )),
            };
            let (err, retry_after) = match outcome {
                Ok(sent) => return Ok(sent),
                Err(e) => e,
            };
            let err = err.with_attempts(attempt).spent(started.elapsed());
            if !err.is_retryable() || attempt > policy.max_retries {
                return Err(err);
            }
            let delay = retry_after
                .unwrap_or_else(|| policy.backoff(attempt - 1))
                .min(policy.max_elapsed);
            if started.elapsed().saturating_add(delay) >= policy.max_elapsed {
                tracing::warn!(
                    attempt,
                    delay_ms = delay.as_millis() as u64,
                    error = %err,
                    "LLM call failed and the next wait would exceed the retry time budget; giving up"
                );
                return Err(err);
            }
            tracing::warn!(
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %err,
                "LLM call failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// Longest non-streamed answer read, in bytes.
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;
/// Longest part of an error body read, in bytes.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Reads `resp`'s body up to `max` bytes; the flag says whether it all fit.
async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = max - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, false));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, true))
}

struct StreamState<S> {
    body: S,
    parser: SseParser,
    assembler: StreamAssembler,
    pending: VecDeque<StreamEvent>,
    datas: Vec<String>,
    idle: Duration,
    /// When the whole answer must be in (keep-alive comments do not move it).
    deadline: tokio::time::Instant,
    /// The call's start, for the figure in a deadline error.
    started: Instant,
    meter: Arc<UsageMeter>,
    display_url: String,
}

impl<S, B, E> StreamState<S>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::error::Error,
{
    /// Reads until at least one event is pending or the stream is over.
    async fn fill(&mut self) -> Result<(), LlmError> {
        while self.pending.is_empty() && !self.assembler.is_done() {
            let now = tokio::time::Instant::now();
            let to_deadline = self.deadline.saturating_duration_since(now);
            if to_deadline.is_zero() {
                return Err(LlmError::Timeout {
                    after: self.started.elapsed(),
                    attempts: 1,
                });
            }
            let wait = self.idle.min(to_deadline);
            match tokio::time::timeout(wait, self.body.next()).await {
                Err(_) if wait < self.idle => {
                    return Err(LlmError::Timeout {
                        after: self.started.elapsed(),
                        attempts: 1,
                    })
                }
                Err(_) => return Err(LlmError::Stalled { silent: self.idle }),
                Ok(Some(Ok(bytes))) => {
                    self.parser.push(bytes.as_ref(), &mut self.datas)?;
                    self.drain_datas()?;
                }
                Ok(Some(Err(e))) => {
                    return Err(LlmError::Connect {
                        url: self.display_url.clone(),
                        attempts: 1,
                        message: format!("the stream broke off: {e}"),
                    })
                }
                Ok(None) => {
                    self.parser.finish(&mut self.datas);
                    self.drain_datas()?;
                    self.assembler.end_of_input(&mut self.pending)?;
                }
            }
        }
        Ok(())
    }

    fn drain_datas(&mut self) -> Result<(), LlmError> {
        for data in self.datas.drain(..) {
            self.assembler.on_data(&data, &mut self.pending)?;
        }
        Ok(())
    }

    async fn next_event(&mut self) -> Option<Result<StreamEvent, LlmError>> {
        if let Err(e) = self.fill().await {
            return Some(Err(e));
        }
        let event = self.pending.pop_front()?;
        if let StreamEvent::Done {
            usage,
            finish_reason,
        } = &event
        {
            self.meter.record(&usage.unwrap_or_default());
            if *finish_reason == super::FinishReason::Length {
                tracing::warn!(
                    target: "memex::llm",
                    "the model's answer was cut off at its token limit (finish_reason `length`); \
                     the text so far is used (raise --llm-max-tokens for longer answers)"
                );
            }
        }
        Some(Ok(event))
    }
}

#[async_trait]
impl ChatModel for OpenAiCompatible {
    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        let body = self.encode(&request, false)?;
        match self.send(&body, false).await? {
            Sent::Parsed(response) => {
                self.meter.record(&response.usage);
                tracing::debug!(
                    model = %response.model,
                    prompt_tokens = response.usage.prompt_tokens,
                    completion_tokens = response.usage.completion_tokens,
                    finish_reason = response.finish_reason.as_str(),
                    "LLM call done"
                );
                self.warn_if_cut_off(&response.finish_reason);
                Ok(response)
            }
            Sent::Stream(_) => Err(LlmError::BadResponse(
                "internal: a non-streamed call produced a stream".into(),
            )),
        }
    }

    async fn stream(
        &self,
        request: ChatRequest,
    ) -> Result<BoxStream<'static, Result<StreamEvent, LlmError>>, LlmError> {
        let body = self.encode(&request, true)?;
        let started = Instant::now();
        let resp = match self.send(&body, true).await? {
            Sent::Stream(resp) => resp,
            Sent::Parsed(response) => {
                self.meter.record(&response.usage);
                let events = response.into_events(false).into_iter().map(Ok);
                return Ok(futures::stream::iter(events).boxed());
            }
        };
        let state = StreamState {
            body: Box::pin(resp.bytes_stream()),
            parser: SseParser::new(),
            assembler: StreamAssembler::new(),
            pending: VecDeque::new(),
            datas: Vec::new(),
            idle: self.config.stream_idle_timeout,
            deadline: tokio::time::Instant::from_std(started)
                .checked_add(self.config.stream_timeout)
                .unwrap_or_else(|| tokio::time::Instant::now() + self.config.stream_idle_timeout),
            started,
            meter: Arc::clone(&self.meter),
            display_url: self.display_url.clone(),
        };
        let events = futures::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            match state.next_event().await? {
                Ok(event) => Some((Ok(event), Some(state))),
                // After an error the stream ends.
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(events.boxed())
    }
}
