//! The chat-model seam and its implementations.
//!
//! * [`ChatModel`] — the async trait the rest of memex talks to: `chat` for a whole answer,
//!   `stream` for text deltas and fully assembled tool calls.
//! * [`Message`], [`ChatRequest`], [`ChatResponse`], [`ToolDefinition`], ... — the OpenAI
//!   chat-completions types; they serialise exactly in that wire format.
//! * [`OpenAiCompatible`] — the HTTP client for Groq, OpenAI, Ollama, vLLM, llama.cpp's server:
//!   timeouts, retries with backoff and jitter, SSE streaming, usage accounting, and an API key
//!   that never shows up in logs, errors or `Debug`.
//! * `ScriptedModel` — the test double, scripted responses plus a record of every request
//!   (only with the `test-util` cargo feature, which memex's own tests and benches turn on).
//!
//! This module knows nothing of conversations, tools' implementations or merchants: it moves
//! messages to a model and back.

mod config;
mod error;
mod openai;
pub mod retry_after;
#[cfg(feature = "test-util")]
mod scripted;
pub mod sse;
mod types;
mod usage;
mod wire;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};

pub use config::{
    ApiKey, LlmConfig, RetryPolicy, DEFAULT_BASE_URL, DEFAULT_MAX_TOKENS, DEFAULT_MODEL,
    ENV_API_KEYS, ENV_BASE_URL, ENV_MAX_TOKENS, ENV_MODEL, ENV_RETRY_BUDGET,
    ENV_STREAM_IDLE_TIMEOUT, ENV_STREAM_TIMEOUT, ENV_TIMEOUT, MAX_MAX_TOKENS, MAX_TIMEOUT_SECS,
};
pub use error::LlmError;
pub use openai::OpenAiCompatible;
#[cfg(feature = "test-util")]
pub use scripted::ScriptedModel;
pub use types::{
    ChatRequest, ChatResponse, FinishReason, FunctionCall, FunctionDefinition, Message,
    ResponseFormat, StreamEvent, ToolCall, ToolChoice, ToolDefinition, Usage,
};
pub use usage::{UsageMeter, UsageTotals};

/// Parses a (non-streamed) chat-completion body the way [`OpenAiCompatible`] does: lenient about
/// server differences, strict about what is required (a first choice with a message).
pub fn parse_completion(body: &[u8]) -> Result<ChatResponse, LlmError> {
    wire::parse_response(body)
}

/// A chat model: something that answers a conversation, possibly by calling tools.
#[async_trait]
pub trait ChatModel: Send + Sync {
    /// The whole answer to `request`.
    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError>;

    /// The answer as a stream: [`StreamEvent::TextDelta`]s as text arrives, one
    /// [`StreamEvent::ToolCall`] per tool call once its arguments are complete, and a final
    /// [`StreamEvent::Done`]. Errors before the first event are returned directly; an error
    /// later is the stream's last item.
    async fn stream(
        &self,
        request: ChatRequest,
    ) -> Result<BoxStream<'static, Result<StreamEvent, LlmError>>, LlmError>;
}

#[async_trait]
impl<T: ChatModel + ?Sized> ChatModel for Arc<T> {
    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        (**self).chat(request).await
    }

    async fn stream(
        &self,
        request: ChatRequest,
    ) -> Result<BoxStream<'static, Result<StreamEvent, LlmError>>, LlmError> {
        (**self).stream(request).await
    }
}

/// Reads a stream from [`ChatModel::stream`] to its end and assembles the [`ChatResponse`]
/// (`model` is left empty: streams do not repeat it reliably).
pub async fn collect_stream(
    events: BoxStream<'static, Result<StreamEvent, LlmError>>,
) -> Result<ChatResponse, LlmError> {
    collect_stream_with(events, |_| {}).await
}

/// [`collect_stream`], handing each text delta to `on_text` as it arrives (for live display).
pub async fn collect_stream_with(
    mut events: BoxStream<'static, Result<StreamEvent, LlmError>>,
    mut on_text: impl FnMut(&str),
) -> Result<ChatResponse, LlmError> {
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    while let Some(event) = events.next().await {
        match event? {
            StreamEvent::TextDelta(delta) => {
                on_text(&delta);
                text.get_or_insert_with(String::new).push_str(&delta)
            }
            StreamEvent::ToolCall(call) => tool_calls.push(call),
            StreamEvent::Done {
                usage,
                finish_reason,
            } => {
                return Ok(ChatResponse {
                    content: text,
                    tool_calls,
                    usage: usage.unwrap_or_default(),
                    finish_reason,
                    model: String::new(),
                })
            }
        }
    }
    Err(LlmError::BadResponse(
        "the stream ended without a final event".into(),
    ))
}
