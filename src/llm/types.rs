//! Request, response and message types, serialised exactly as the OpenAI chat-completions API
//! expects them (and as Groq, Ollama, vLLM and llama.cpp's server accept them).

use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::LlmError;

/// One chat message in the OpenAI wire format, tagged by `role`.
///
/// ```
/// use memex::llm::Message;
/// let m = Message::tool("call_1", "{\"status\":\"settled\"}");
/// let json = serde_json::to_value(&m).unwrap();
/// assert_eq!(json["role"], "tool");
/// assert_eq!(json["tool_call_id"], "call_1");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Message {
    /// Instructions for the model.
    System {
        /// The instructions.
        content: String,
    },
    /// What the user (the merchant) said.
    User {
        /// The user's text.
        content: String,
    },
    /// What the model answered: text, tool calls, or both.
    Assistant {
        /// The text of the answer; `null` on the wire when the model only called tools.
        #[serde(default)]
        content: Option<String>,
        /// Tools the model asked to call; omitted on the wire when empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call, answering the assistant's call with the same id.
    Tool {
        /// The `id` of the [`ToolCall`] this message answers.
        tool_call_id: String,
        /// The tool's output (usually JSON text).
        content: String,
    },
}

impl Message {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Message::System {
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message::User {
            content: content.into(),
        }
    }

    /// An assistant message with text only.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::Assistant {
            content: Some(content.into()),
            tool_calls: Vec::new(),
        }
    }

    /// An assistant message that calls tools (and says nothing).
    pub fn assistant_tool_calls(tool_calls: Vec<ToolCall>) -> Self {
        Message::Assistant {
            content: None,
            tool_calls,
        }
    }

    /// A tool result answering the call `tool_call_id`.
    pub fn tool(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Message::Tool {
            tool_call_id: tool_call_id.into(),
            content: content.into(),
        }
    }

    /// The role as it appears on the wire: `system`, `user`, `assistant` or `tool`.
    pub fn role(&self) -> &'static str {
        match self {
            Message::System { .. } => "system",
            Message::User { .. } => "user",
            Message::Assistant { .. } => "assistant",
            Message::Tool { .. } => "tool",
        }
    }

    /// The text content, if any.
    pub fn content(&self) -> Option<&str> {
        match self {
            Message::System { content }
            | Message::User { content }
            | Message::Tool { content, .. } => Some(content),
            Message::Assistant { content, .. } => content.as_deref(),
        }
    }

    /// The tool calls of an assistant message (empty for every other message).
    pub fn tool_calls(&self) -> &[ToolCall] {
        match self {
            Message::Assistant { tool_calls, .. } => tool_calls,
            _ => &[],
        }
    }
}

/// A tool call requested by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Identifier chosen by the server; the tool result must quote it.
    pub id: String,
    /// Always `"function"` in the current API.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// The function to call and its arguments.
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".to_string()
}

impl ToolCall {
    /// A function tool call; `arguments` is the JSON text of the arguments.
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        ToolCall {
            id: id.into(),
            kind: function_type(),
            function: FunctionCall {
                name: name.into(),
                arguments: arguments.into(),
            },
        }
    }

    /// The function name.
    pub fn name(&self) -> &str {
        &self.function.name
    }

    /// The arguments parsed as JSON (an empty string counts as `{}`).
    pub fn arguments_json(&self) -> Result<Value, LlmError> {
        let raw = self.function.arguments.trim();
        if raw.is_empty() {
            return Ok(Value::Object(Default::default()));
        }
        serde_json::from_str(raw).map_err(|e| {
            LlmError::BadResponse(format!(
                "the arguments of tool call `{}` ({}) are not valid JSON: {e}",
                self.id, self.function.name
            ))
        })
    }
}

/// The function part of a [`ToolCall`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Name of the function.
    pub name: String,
    /// Arguments as JSON text, exactly as the model produced them.
    #[serde(default)]
    pub arguments: String,
}

/// A tool the model may call, in the OpenAI `tools` format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// Always `"function"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Name, description and JSON schema of the parameters.
    pub function: FunctionDefinition,
}

impl ToolDefinition {
    /// A function tool with a JSON-schema `parameters` object.
    pub fn function(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Value,
    ) -> Self {
        ToolDefinition {
            kind: function_type(),
            function: FunctionDefinition {
                name: name.into(),
                description: Some(description.into()),
                parameters,
            },
        }
    }
}

/// The function part of a [`ToolDefinition`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDefinition {
    /// Name the model uses to call it.
    pub name: String,
    /// What the tool does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the arguments object.
    pub parameters: Value,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (`"auto"`).
    Auto,
    /// The model must not call tools (`"none"`).
    None,
    /// The model must call at least one tool (`"required"`).
    Required,
    /// The model must call this function.
    Function(String),
}

impl Serialize for ToolChoice {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ToolChoice::Auto => serializer.serialize_str("auto"),
            ToolChoice::None => serializer.serialize_str("none"),
            ToolChoice::Required => serializer.serialize_str("required"),
            ToolChoice::Function(name) => serde_json::json!({
                "type": "function",
                "function": { "name": name }
            })
            .serialize(serializer),
        }
    }
}

/// The `response_format` of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// Plain text (the default; rarely needs saying).
    Text,
    /// JSON mode: the model must answer one JSON object (`{"type":"json_object"}`).
    JsonObject,
    /// Structured output against a schema (`{"type":"json_schema", ...}`), where supported.
    JsonSchema {
        /// Name of the schema.
        name: String,
        /// The JSON schema.
        schema: Value,
        /// Whether the server must follow the schema strictly.
        strict: bool,
    },
}

impl Serialize for ResponseFormat {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let v = match self {
            ResponseFormat::Text => serde_json::json!({ "type": "text" }),
            ResponseFormat::JsonObject => serde_json::json!({ "type": "json_object" }),
            ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            } => serde_json::json!({
                "type": "json_schema",
                "json_schema": { "name": name, "schema": schema, "strict": strict }
            }),
        };
        v.serialize(serializer)
    }
}

/// One request to a chat model. The model name comes from the client's configuration unless
/// [`ChatRequest::model`] overrides it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    /// The conversation, oldest first.
    pub messages: Vec<Message>,
    /// Tools the model may call (omitted on the wire when empty).
    pub tools: Vec<ToolDefinition>,
    /// Whether and which tool the model must call.
    pub tool_choice: Option<ToolChoice>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// JSON mode or structured output.
    pub response_format: Option<ResponseFormat>,
    /// Overrides the configured model for this request.
    pub model: Option<String>,
}

impl ChatRequest {
    /// A request with these messages and nothing else set.
    pub fn new(messages: Vec<Message>) -> Self {
        ChatRequest {
            messages,
            ..Default::default()
        }
    }

    /// Adds tool definitions.
    pub fn with_tools(mut self, tools: Vec<ToolDefinition>) -> Self {
        self.tools = tools;
        self
    }

    /// Sets `tool_choice`.
    pub fn with_tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = Some(choice);
        self
    }

    /// Sets the temperature.
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Sets `max_tokens`.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Asks for a JSON object answer (JSON mode).
    pub fn json_mode(mut self) -> Self {
        self.response_format = Some(ResponseFormat::JsonObject);
        self
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// It finished its answer.
    Stop,
    /// It hit `max_tokens` or the context length.
    Length,
    /// It wants tool results.
    ToolCalls,
    /// The provider filtered the content.
    ContentFilter,
    /// Anything else the server said (kept verbatim).
    Other(String),
}

impl FinishReason {
    /// Parses the wire value (`"stop"`, `"length"`, `"tool_calls"`, `"function_call"`, ...).
    pub fn parse(value: &str) -> Self {
        match value {
            "stop" | "eos" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.to_string()),
        }
    }

    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other(s) => s,
        }
    }
}

/// Token usage of one call (or a sum of calls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Prompt plus completion.
    #[serde(default)]
    pub total_tokens: u64,
}

impl Add for Usage {
    type Output = Usage;
    fn add(self, rhs: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens + rhs.prompt_tokens,
            completion_tokens: self.completion_tokens + rhs.completion_tokens,
            total_tokens: self.total_tokens + rhs.total_tokens,
        }
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, rhs: Usage) {
        *self = *self + rhs;
    }
}

/// The answer to a [`ChatRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The text of the answer (`None` when the model only called tools).
    pub content: Option<String>,
    /// Tools the model asked to call.
    pub tool_calls: Vec<ToolCall>,
    /// Tokens used by this call (zeros when the server did not say).
    pub usage: Usage,
    /// Why the model stopped.
    pub finish_reason: FinishReason,
    /// The model that answered, as the server named it (empty when it did not say).
    pub model: String,
}

impl ChatResponse {
    /// A plain text answer that stopped normally, with zero usage (handy in tests).
    pub fn text(content: impl Into<String>) -> Self {
        ChatResponse {
            content: Some(content.into()),
            tool_calls: Vec::new(),
            usage: Usage::default(),
            finish_reason: FinishReason::Stop,
            model: String::new(),
        }
    }

    /// An answer that calls tools, with zero usage (handy in tests).
    pub fn with_tool_calls(tool_calls: Vec<ToolCall>) -> Self {
        ChatResponse {
            content: None,
            tool_calls,
            usage: Usage::default(),
            finish_reason: FinishReason::ToolCalls,
            model: String::new(),
        }
    }

    /// Sets the usage (builder style).
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }

    /// The response as stream events: its text (word by word when `split_words`, else whole),
    /// its tool calls, then `Done`.
    pub fn into_events(self, split_words: bool) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        if let Some(text) = self.content.filter(|t| !t.is_empty()) {
            if split_words {
                let mut piece = String::new();
                for ch in text.chars() {
                    piece.push(ch);
                    if ch.is_whitespace() {
                        events.push(StreamEvent::TextDelta(std::mem::take(&mut piece)));
                    }
                }
                if !piece.is_empty() {
                    events.push(StreamEvent::TextDelta(piece));
                }
            } else {
                events.push(StreamEvent::TextDelta(text));
            }
        }
        events.extend(self.tool_calls.into_iter().map(StreamEvent::ToolCall));
        events.push(StreamEvent::Done {
            usage: Some(self.usage),
            finish_reason: self.finish_reason,
        });
        events
    }

    /// The assistant message to append to the conversation.
    pub fn to_message(&self) -> Message {
        Message::Assistant {
            content: self.content.clone(),
            tool_calls: self.tool_calls.clone(),
        }
    }
}

/// One event of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A piece of the answer's text.
    TextDelta(String),
    /// A tool call, complete (its arguments assembled from every chunk).
    ToolCall(ToolCall),
    /// The end of the answer.
    Done {
        /// Token usage, when the server reported it.
        usage: Option<Usage>,
        /// Why the model stopped.
        finish_reason: FinishReason,
    },
}
