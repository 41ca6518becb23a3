//! The JSON bodies of the chat-completions API: the request we send and the lenient parsing of
//! what servers answer (OpenAI, Groq, Ollama, vLLM and llama.cpp differ in small ways).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::LlmError;
use super::types::{
    ChatRequest, ChatResponse, FinishReason, Message, ResponseFormat, ToolCall, ToolChoice,
    ToolDefinition, Usage,
};

/// The request body.
#[derive(Serialize)]
pub(crate) struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tools: &'a [ToolDefinition],
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a ToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a ResponseFormat>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

impl<'a> WireRequest<'a> {
    /// The body for `request`, with `model` unless the request overrides it, and `max_tokens`
    /// the request's own number capped at `max_tokens` (either alone when the other is unset).
    pub(crate) fn new(
        request: &'a ChatRequest,
        model: &'a str,
        stream: bool,
        stream_usage: bool,
        max_tokens: Option<u32>,
    ) -> Self {
        WireRequest {
            model: request.model.as_deref().unwrap_or(model),
            messages: &request.messages,
            tools: &request.tools,
            // `tool_choice` without tools is rejected by OpenAI; leave it out then.
            tool_choice: request
                .tool_choice
                .as_ref()
                .filter(|_| !request.tools.is_empty()),
            temperature: request.temperature,
            max_tokens,
            response_format: request.response_format.as_ref(),
            stream,
            stream_options: (stream && stream_usage).then_some(StreamOptions {
                include_usage: true,
            }),
        }
    }
}

/// Groq's extension object, which carries the usage of streamed answers.
#[derive(Deserialize)]
pub(crate) struct XGroq {
    #[serde(default)]
    usage: Option<Usage>,
}

/// The usage a body reports, in `usage` or Groq's `x_groq.usage`; `total_tokens` filled in when
/// the server left it out.
pub(crate) fn pick_usage(usage: Option<Usage>, x_groq: Option<XGroq>) -> Option<Usage> {
    usage.or(x_groq.and_then(|x| x.usage)).map(|mut u| {
        if u.total_tokens == 0 {
            u.total_tokens = u.prompt_tokens + u.completion_tokens;
        }
        u
    })
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Option<Vec<WireChoice>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    x_groq: Option<XGroq>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: Option<Value>,
}

/// Parses a (non-streamed) chat-completion body.
pub(crate) fn parse_response(body: &[u8]) -> Result<ChatResponse, LlmError> {
    let parsed: WireResponse = serde_json::from_slice(body).map_err(|e| {
        LlmError::BadResponse(format!(
            "the body is not a chat completion ({e}); it starts with `{}`",
            snippet(body)
        ))
    })?;
    if let Some(err) = parsed.error {
        return Err(LlmError::BadResponse(format!(
            "the server answered with an error: {}",
            error_message(&err)
        )));
    }
    let mut choices = parsed.choices.unwrap_or_default();
    if choices.is_empty() {
        return Err(LlmError::BadResponse(
            "the response has no choices (empty `choices` list)".into(),
        ));
    }
    let pos = choices.iter().position(|c| c.index == 0).unwrap_or(0);
    let choice = choices.swap_remove(pos);
    let message = choice
        .message
        .ok_or_else(|| LlmError::BadResponse("the first choice has no `message`".into()))?;
    let tool_calls: Vec<ToolCall> = message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, tc)| {
            let arguments = match tc.function.arguments {
                Some(Value::String(s)) if !s.trim().is_empty() => s,
                Some(Value::String(_)) | Some(Value::Null) | None => "{}".to_string(),
                Some(other) => other.to_string(),
            };
            let id = tc
                .id
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("call_{i}"));
            ToolCall::new(id, tc.function.name, arguments)
        })
        .collect();
    let finish_reason = match choice.finish_reason.as_deref() {
        Some(r) if !r.is_empty() => FinishReason::parse(r),
        _ if !tool_calls.is_empty() => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    };
    Ok(ChatResponse {
        content: message.content,
        tool_calls,
        usage: pick_usage(parsed.usage, parsed.x_groq).unwrap_or_default(),
        finish_reason,
        model: parsed.model.unwrap_or_default(),
    })
}

/// The human part of an error body: `error.message`, `message`, `error` as a string, or the
/// JSON itself; at most 500 characters.
pub(crate) fn error_message(v: &Value) -> String {
    let text = v
        .get("error")
        .and_then(|e| e.get("message").or(Some(e)))
        .or_else(|| v.get("message"))
        .unwrap_or(v);
    let text = match text {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    truncate(&text, 500)
}

/// The message to show for an HTTP error body (JSON or not).
pub(crate) fn body_message(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => error_message(&v),
        Err(_) if body.is_empty() => "(empty body)".to_string(),
        Err(_) => snippet(body),
    }
}

/// The first 200 characters of a body, lossily decoded.
pub(crate) fn snippet(body: &[u8]) -> String {
    truncate(String::from_utf8_lossy(body).trim(), 200)
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_omits_unset_fields_and_tool_choice_without_tools() {
        let req = ChatRequest::new(vec![Message::user("hi")]).with_tool_choice(ToolChoice::Auto);
        let v = serde_json::to_value(WireRequest::new(&req, "m", false, true, None)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false})
        );
        let v = serde_json::to_value(WireRequest::new(&req, "m", true, true, Some(9))).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["max_tokens"], 9);
    }

    #[test]
    fn assistant_tool_call_message_has_openai_shape() {
        let m = Message::assistant_tool_calls(vec![ToolCall::new("c1", "f", "{}")]);
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            serde_json::json!({"role":"assistant","content":null,"tool_calls":[
                {"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]})
        );
        let back: Message = serde_json::from_value(serde_json::to_value(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn lenient_response_parsing() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":null,
            "tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]}}],
            "x_groq":{"usage":{"prompt_tokens":3,"completion_tokens":4}}}"#;
        let r = parse_response(body).unwrap();
        assert_eq!(r.tool_calls[0].id, "call_0");
        assert_eq!(r.tool_calls[0].function.arguments, r#"{"a":1}"#);
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r.usage.total_tokens, 7);
    }
}
