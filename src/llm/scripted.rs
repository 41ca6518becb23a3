//! [`ScriptedModel`]: a [`ChatModel`] that answers from a script, for tests of everything that
//! sits on top of the LLM (the conversation buffer, the agent loop).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};

use super::{
    ChatModel, ChatRequest, ChatResponse, LlmError, StreamEvent, ToolCall, UsageMeter, UsageTotals,
};

type Handler = Box<dyn FnMut(&ChatRequest) -> Result<ChatResponse, LlmError> + Send>;

enum Step {
    Reply(Result<ChatResponse, LlmError>),
    Delayed(Duration, Result<ChatResponse, LlmError>),
    Hang,
}

enum Script {
    Queue(VecDeque<Step>),
    Handler(Handler),
}

struct Inner {
    script: Script,
    requests: Vec<ChatRequest>,
}

/// A scripted chat model. It answers either from a queue of scripted steps (responses, errors,
/// delays, a call that never returns) or from a closure, and records every request it received
/// so tests can assert on what was sent.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use memex::llm::{ChatModel, ChatRequest, Message, ScriptedModel};
/// let model = ScriptedModel::new();
/// model.push_text("Your payout is on its way.");
/// let answer = model.chat(ChatRequest::new(vec![Message::user("where is my payout?")])).await.unwrap();
/// assert_eq!(answer.content.as_deref(), Some("Your payout is on its way."));
/// assert_eq!(model.requests()[0].messages.len(), 1);
/// # });
/// ```
pub struct ScriptedModel {
    inner: Mutex<Inner>,
    meter: UsageMeter,
}

impl std::fmt::Debug for ScriptedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedModel")
            .field("requests", &self.request_count())
            .field("remaining", &self.remaining())
            .finish()
    }
}

impl Default for ScriptedModel {
    fn default() -> Self {
        Self::new()
    }
}

impl ScriptedModel {
    /// A model with an empty queue: push steps before calling it. A call with nothing left
    /// fails with [`LlmError::ScriptExhausted`].
    pub fn new() -> Self {
        ScriptedModel {
            inner: Mutex::new(Inner {
                script: Script::Queue(VecDeque::new()),
                requests: Vec::new(),
            }),
            meter: UsageMeter::default(),
        }
    }

    /// A model that answers every request with `handler(&request)`.
    pub fn from_fn(
        handler: impl FnMut(&ChatRequest) -> Result<ChatResponse, LlmError> + Send + 'static,
    ) -> Self {
        ScriptedModel {
            inner: Mutex::new(Inner {
                script: Script::Handler(Box::new(handler)),
                requests: Vec::new(),
            }),
            meter: UsageMeter::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the recorded requests from the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, step: Step) -> &Self {
        if let Script::Queue(q) = &mut self.lock().script {
            q.push_back(step);
        }
        self
    }

    /// Queues a response. (Ignored by a [`ScriptedModel::from_fn`] model.)
    pub fn push_response(&self, response: ChatResponse) -> &Self {
        self.push(Step::Reply(Ok(response)))
    }

    /// Queues a plain text answer.
    pub fn push_text(&self, text: impl Into<String>) -> &Self {
        self.push_response(ChatResponse::text(text))
    }

    /// Queues an answer that calls these tools.
    pub fn push_tool_calls(&self, calls: Vec<ToolCall>) -> &Self {
        self.push_response(ChatResponse::with_tool_calls(calls))
    }

    /// Queues an error.
    pub fn push_error(&self, error: LlmError) -> &Self {
        self.push(Step::Reply(Err(error)))
    }

    /// Queues a response that is returned after `delay`.
    pub fn push_delayed(&self, delay: Duration, response: ChatResponse) -> &Self {
        self.push(Step::Delayed(delay, Ok(response)))
    }

    /// Queues a call that never returns (to test timeouts and cancellation).
    pub fn push_hang(&self) -> &Self {
        self.push(Step::Hang)
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.lock().requests.clone()
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        self.lock().requests.len()
    }

    /// The last request received.
    pub fn last_request(&self) -> Option<ChatRequest> {
        self.lock().requests.last().cloned()
    }

    /// Steps still queued (0 for a closure model).
    pub fn remaining(&self) -> usize {
        match &self.lock().script {
            Script::Queue(q) => q.len(),
            Script::Handler(_) => 0,
        }
    }

    /// Calls answered and tokens "used" (the usage of the scripted responses).
    pub fn usage_totals(&self) -> UsageTotals {
        self.meter.totals()
    }

    async fn answer(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        let step = {
            let mut inner = self.lock();
            inner.requests.push(request);
            let n = inner.requests.len();
            let Inner { script, requests } = &mut *inner;
            match script {
                Script::Queue(q) => q
                    .pop_front()
                    .unwrap_or(Step::Reply(Err(LlmError::ScriptExhausted(n)))),
                Script::Handler(h) => {
                    let last = requests.last().cloned().unwrap_or_default();
                    Step::Reply(h(&last))
                }
            }
        };
        let result = match step {
            Step::Reply(r) => r,
            Step::Delayed(d, r) => {
                tokio::time::sleep(d).await;
                r
            }
            Step::Hang => std::future::pending().await,
        };
        if let Ok(response) = &result {
            self.meter.record(&response.usage);
        }
        result
    }
}

#[async_trait]
impl ChatModel for ScriptedModel {
    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.answer(request).await
    }

    /// Streams the scripted response: its text word by word, then its tool calls, then `Done`.
    async fn stream(
        &self,
        request: ChatRequest,
    ) -> Result<BoxStream<'static, Result<StreamEvent, LlmError>>, LlmError> {
        let response = self.answer(request).await?;
        let events = response.into_events(true);
        Ok(stream::iter(events.into_iter().map(Ok)).boxed())
    }
}
