//! Server-sent events: [`SseParser`] splits the byte stream into event payloads and
//! [`StreamAssembler`] turns chat-completion chunks into [`StreamEvent`]s, assembling tool-call
//! arguments that arrive spread over many chunks.

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;
use serde_json::Value;

use super::wire::{error_message, pick_usage, XGroq};
use super::{FinishReason, LlmError, StreamEvent, ToolCall, Usage};

/// Longest event (or unterminated line) [`SseParser`] buffers, in bytes; beyond it the stream
/// is refused rather than held in memory without bound.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The most answer text plus tool-call names and arguments one streamed answer may carry, as
/// for a non-streamed answer: a peer cannot make memex hold more.
pub const MAX_STREAM_BYTES: usize = 32 * 1024 * 1024;

/// The most distinct tool calls one streamed answer may carry.
pub const MAX_STREAM_CALLS: usize = 128;

/// Incremental parser of a `text/event-stream` body. Feed it bytes as they arrive; it hands out
/// the `data` of each complete event (multi-line data joined with `\n`). Comments, `event:`,
/// `id:` and `retry:` fields are ignored; lines may end in `\n` or `\r\n`.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// A parser with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` and appends the data of every event they complete to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<String>) -> Result<(), LlmError> {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(rel) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + rel;
            let mut line = &self.buf[start..end];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            let line = std::str::from_utf8(line)
                .map_err(|_| LlmError::BadResponse("the event stream is not valid UTF-8".into()))?;
            if line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.data));
                    self.has_data = false;
                }
            } else if !line.starts_with(':') {
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                if field == "data" {
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                    self.has_data = true;
                }
            }
            start = end + 1;
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_EVENT_BYTES || self.data.len() > MAX_EVENT_BYTES {
            return Err(LlmError::BadResponse(format!(
                "an event in the stream is longer than {MAX_EVENT_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// End of input: hands out an event whose terminating blank line never came.
    pub fn finish(&mut self, out: &mut Vec<String>) {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            if let Ok(line) = std::str::from_utf8(&rest) {
                let line = line.trim_end_matches('\r');
                if let Some(value) = line.strip_prefix("data:") {
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
                    self.has_data = true;
                }
            }
        }
        if self.has_data {
            out.push(std::mem::take(&mut self.data));
            self.has_data = false;
        }
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    x_groq: Option<XGroq>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Debug, Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Turns the data payloads of a chat-completion stream into [`StreamEvent`]s.
///
/// Text deltas are passed on as they come; tool calls are held until the choice finishes and
/// then emitted whole, in index order; [`StreamEvent::Done`] comes last, with the usage when the
/// server sent it (OpenAI's `usage` chunk or Groq's `x_groq.usage`).
#[derive(Debug, Default)]
pub struct StreamAssembler {
    calls: BTreeMap<u32, PartialCall>,
    /// Bytes of answer text and tool calls received so far (bounded by [`MAX_STREAM_BYTES`]).
    received: usize,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    calls_emitted: bool,
    done: bool,
}

impl StreamAssembler {
    /// A fresh assembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the stream is complete (`[DONE]` seen, or [`StreamAssembler::end_of_input`]
    /// accepted the end).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Handles the data of one event, appending the events it produces to `out`.
    pub fn on_data(&mut self, data: &str, out: &mut VecDeque<StreamEvent>) -> Result<(), LlmError> {
        if self.done {
            return Ok(());
        }
        let data = data.trim();
        if data == "[DONE]" {
            self.complete(out)?;
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
            LlmError::BadResponse(format!("a streamed chunk is not valid JSON ({e})"))
        })?;
        if let Some(err) = chunk.error {
            return Err(LlmError::BadResponse(format!(
                "the server reported an error mid-stream: {}",
                error_message(&err)
            )));
        }
        if let Some(usage) = pick_usage(chunk.usage, chunk.x_groq) {
            self.usage = Some(usage);
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    self.account(text.len())?;
                    out.push_back(StreamEvent::TextDelta(text));
                }
                for (pos, tc) in delta.tool_calls.into_iter().flatten().enumerate() {
                    let index = tc.index.unwrap_or(pos as u32);
                    if !self.calls.contains_key(&index) && self.calls.len() >= MAX_STREAM_CALLS {
                        return Err(LlmError::BadResponse(format!(
                            "the streamed answer has more than {MAX_STREAM_CALLS} tool calls"
                        )));
                    }
                    let size = tc.id.as_ref().map_or(0, String::len)
                        + tc.function.as_ref().map_or(0, |f| {
                            f.name.as_ref().map_or(0, String::len)
                                + f.arguments.as_ref().map_or(0, |a| match a {
                                    Value::String(s) => s.len(),
                                    other => other.to_string().len(),
                                })
                        });
                    self.account(size)?;
                    let call = self.calls.entry(index).or_default();
                    if let Some(id) = tc.id.filter(|s| !s.is_empty()) {
                        call.id = id;
                    }
                    if let Some(f) = tc.function {
                        if let Some(name) = f.name.filter(|s| !s.is_empty()) {
                            if call.name.is_empty() {
                                call.name = name;
                            } else if call.name != name {
                                call.name.push_str(&name);
                            }
                        }
                        match f.arguments {
                            Some(Value::String(s)) => call.arguments.push_str(&s),
                            Some(Value::Null) | None => {}
                            Some(other) => call.arguments.push_str(&other.to_string()),
                        }
                    }
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.finish = Some(FinishReason::parse(&reason));
                self.emit_calls(out)?;
            }
        }
        Ok(())
    }

    /// Counts `n` more bytes of the answer, refusing an answer past [`MAX_STREAM_BYTES`].
    fn account(&mut self, n: usize) -> Result<(), LlmError> {
        self.received = self.received.saturating_add(n);
        if self.received > MAX_STREAM_BYTES {
            return Err(LlmError::BadResponse(format!(
                "the streamed answer is longer than {MAX_STREAM_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// The body ended. Fine when the answer finished (a `finish_reason` arrived) even without
    /// `[DONE]`; an error otherwise, because the answer was cut off.
    pub fn end_of_input(&mut self, out: &mut VecDeque<StreamEvent>) -> Result<(), LlmError> {
        if self.done {
            return Ok(());
        }
        if self.finish.is_none() {
            return Err(LlmError::BadResponse(
                "the stream ended before the answer was complete".into(),
            ));
        }
        self.complete(out)
    }

    fn complete(&mut self, out: &mut VecDeque<StreamEvent>) -> Result<(), LlmError> {
        self.emit_calls(out)?;
        let finish_reason = self.finish.clone().unwrap_or(if self.calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        });
        out.push_back(StreamEvent::Done {
            usage: self.usage,
            finish_reason,
        });
        self.done = true;
        Ok(())
    }

    fn emit_calls(&mut self, out: &mut VecDeque<StreamEvent>) -> Result<(), LlmError> {
        if self.calls_emitted {
            return Ok(());
        }
        self.calls_emitted = true;
        for (index, call) in &self.calls {
            if call.name.is_empty() {
                return Err(LlmError::BadResponse(format!(
                    "streamed tool call #{index} has no function name"
                )));
            }
            let id = if call.id.is_empty() {
                format!("call_{index}")
            } else {
                call.id.clone()
            };
            let args = if call.arguments.trim().is_empty() {
                "{}".to_string()
            } else {
                call.arguments.clone()
            };
            out.push_back(StreamEvent::ToolCall(ToolCall::new(
                id,
                call.name.clone(),
                args,
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembler_bounds_what_a_stream_can_make_it_hold() {
        // Too many distinct tool calls.
        let mut a = StreamAssembler::new();
        let mut out = VecDeque::new();
        let mut err = None;
        for i in 0..=MAX_STREAM_CALLS {
            let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": i, "id": format!("c{i}"), "function": {"name": "t", "arguments": "{}"}}
            ]}}]});
            if let Err(e) = a.on_data(&chunk.to_string(), &mut out) {
                err = Some(e);
                break;
            }
        }
        assert!(err.is_some_and(|e| e.to_string().contains("tool calls")));
        // Arguments growing past the answer bound, one event at a time.
        let mut a = StreamAssembler::new();
        let piece = "x".repeat(1024 * 1024);
        let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": piece}}
        ]}}]})
        .to_string();
        let mut failed = false;
        for _ in 0..(MAX_STREAM_BYTES / piece.len() + 2) {
            if a.on_data(&chunk, &mut out).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "an unbounded tool-call argument was accepted");
    }

    #[test]
    fn parser_handles_split_lines_crlf_and_comments() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.push(b": keep-alive\r\n\r\nda", &mut out).unwrap();
        assert!(out.is_empty());
        p.push(b"ta: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\n", &mut out)
            .unwrap();
        assert_eq!(out, vec!["{\"a\":1}".to_string(), "x\ny".to_string()]);
        p.push(b"data: tail", &mut out).unwrap();
        p.finish(&mut out);
        assert_eq!(out.last().unwrap(), "tail");
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let piece = vec![b'x'; 1024 * 1024];
        let mut failed = false;
        for _ in 0..(MAX_EVENT_BYTES / piece.len() + 2) {
            if p.push(&piece, &mut out).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }

    #[test]
    fn assembler_joins_tool_arguments() {
        let mut a = StreamAssembler::new();
        let mut out = VecDeque::new();
        let chunks = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"lookup","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"id\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"pay_1\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#,
            "[DONE]",
        ];
        for c in chunks {
            a.on_data(c, &mut out).unwrap();
        }
        let events: Vec<_> = out.into_iter().collect();
        assert_eq!(events[0], StreamEvent::TextDelta("Hi".into()));
        assert_eq!(
            events[1],
            StreamEvent::ToolCall(ToolCall::new("call_a", "lookup", "{\"id\":\"pay_1\"}"))
        );
        assert_eq!(
            events[2],
            StreamEvent::Done {
                usage: Some(Usage {
                    prompt_tokens: 5,
                    completion_tokens: 7,
                    total_tokens: 12
                }),
                finish_reason: FinishReason::ToolCalls
            }
        );
    }

    #[test]
    fn cut_off_stream_is_an_error() {
        let mut a = StreamAssembler::new();
        let mut out = VecDeque::new();
        a.on_data(r#"{"choices":[{"delta":{"content":"par"}}]}"#, &mut out)
            .unwrap();
        assert!(a.end_of_input(&mut out).is_err());
    }
}
