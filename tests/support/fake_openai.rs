//! A real HTTP/1.1 server on 127.0.0.1 that speaks enough of the OpenAI chat-completions
//! protocol to test clients against: scripted replies (JSON bodies, error statuses with headers,
//! SSE streams sent with chunked encoding, a server that hangs, a connection that drops), a
//! record of every request, API-key checking, and the message-order rules real servers enforce
//! (a `tool` message must answer a preceding assistant `tool_calls` id, and every call must be
//! answered before the conversation goes on) — breaking them gets a 400, as from OpenAI.
#![allow(dead_code)]

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One scripted reply.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A response with a `Content-Length` body.
    Http {
        /// HTTP status.
        status: u16,
        /// Extra headers (e.g. `Retry-After`).
        headers: Vec<(String, String)>,
        /// The body, sent as is.
        body: String,
    },
    /// A `text/event-stream` response: one `data:` event per payload, in its own HTTP chunk,
    /// `delay` apart.
    Sse {
        /// The data payloads (include `"[DONE]"` to end like OpenAI).
        events: Vec<String>,
        /// Pause before each event.
        delay: Duration,
    },
    /// Read the request and never answer (until the client goes away).
    Hang,
    /// Close the connection without answering.
    Drop,
}

fn usage_json() -> Value {
    json!({"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17})
}

impl Reply {
    /// A 200 with this JSON body.
    pub fn json(body: Value) -> Self {
        Reply::Http {
            status: 200,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    /// A chat completion answering `content` (usage 12 + 5 = 17 tokens).
    pub fn text(content: &str) -> Self {
        Reply::json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": usage_json()
        }))
    }

    /// A chat completion calling tools: `(id, name, arguments JSON text)`.
    pub fn tool_calls(calls: &[(&str, &str, &str)]) -> Self {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(id, name, args)| {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
            })
            .collect();
        Reply::json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": calls},
                         "finish_reason": "tool_calls"}],
            "usage": usage_json()
        }))
    }

    /// An error status with an OpenAI-style error body.
    pub fn status(status: u16, message: &str) -> Self {
        Reply::Http {
            status,
            headers: Vec::new(),
            body: json!({"error": {"message": message, "type": "fake_error"}}).to_string(),
        }
    }

    /// Adds a header to an [`Reply::Http`] reply.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Reply::Http { headers, .. } = &mut self {
            headers.push((name.to_string(), value.to_string()));
        }
        self
    }

    /// A 200 whose body is not JSON.
    pub fn malformed() -> Self {
        Reply::Http {
            status: 200,
            headers: Vec::new(),
            body: "{\"choices\": [{\"message\": oops".to_string(),
        }
    }

    /// A 200 completion with an empty `choices` list.
    pub fn empty_choices() -> Self {
        Reply::json(
            json!({"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                           "model": "fake-model", "choices": [], "usage": usage_json()}),
        )
    }

    /// A streamed text answer, one chunk per piece, then finish, usage and `[DONE]`.
    pub fn sse_text(pieces: &[&str]) -> Self {
        let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        events.extend(pieces.iter().map(|p| chunk(json!({"content": p}), None)));
        events.push(chunk(json!({}), Some("stop")));
        events.push(usage_chunk());
        events.push("[DONE]".to_string());
        Reply::Sse {
            events,
            delay: Duration::ZERO,
        }
    }

    /// A streamed answer calling tools, each call's arguments split into `pieces` chunks.
    pub fn sse_tool_calls(calls: &[(&str, &str, &str)], pieces: usize) -> Self {
        let mut events = vec![chunk(json!({"role": "assistant", "content": null}), None)];
        for (index, (id, name, args)) in calls.iter().enumerate() {
            events.push(chunk(
                json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                                       "function": {"name": name, "arguments": ""}}]}),
                None,
            ));
            for part in split_chars(args, pieces) {
                events.push(chunk(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": part}}]}),
                    None,
                ));
            }
        }
        events.push(chunk(json!({}), Some("tool_calls")));
        events.push(usage_chunk());
        events.push("[DONE]".to_string());
        Reply::Sse {
            events,
            delay: Duration::ZERO,
        }
    }

    /// Sets the pause before each event of an [`Reply::Sse`] reply.
    pub fn with_delay(mut self, pause: Duration) -> Self {
        if let Reply::Sse { delay, .. } = &mut self {
            *delay = pause;
        }
        self
    }
}

/// One `chat.completion.chunk` payload with this delta and finish reason.
pub fn chunk(delta: Value, finish: Option<&str>) -> String {
    json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
           "model": "fake-model",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    .to_string()
}

fn usage_chunk() -> String {
    json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
           "model": "fake-model", "choices": [], "usage": usage_json()})
    .to_string()
}

/// Splits `s` into `n` (roughly equal, non-empty) pieces on character boundaries.
pub fn split_chars(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let n = n.clamp(1, chars.len().max(1));
    let size = chars.len().div_ceil(n).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `POST`, ...
    pub method: String,
    /// The request path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Null` when it was not JSON).
    pub body: Value,
}

impl Recorded {
    /// The value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    replies: VecDeque<Reply>,
    fallback: Option<Reply>,
    requests: Vec<Recorded>,
    received: usize,
    forget_requests: bool,
    required_key: Option<String>,
}

/// The server. It stops when dropped.
pub struct FakeOpenAi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeOpenAi {
    /// Starts a server on a free loopback port (inside the current tokio runtime).
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let _ = socket.set_nodelay(true);
                tokio::spawn(serve(socket, Arc::clone(&shared)));
            }
        });
        FakeOpenAi { addr, state, task }
    }

    /// The base URL to configure the client with (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues a reply (replies are used in order, one per chat-completions request).
    pub fn push(&self, reply: Reply) -> &Self {
        lock(&self.state).replies.push_back(reply);
        self
    }

    /// The reply used when the queue is empty (without one: a 500 saying so).
    pub fn set_fallback(&self, reply: Reply) {
        lock(&self.state).fallback = Some(reply);
    }

    /// Requires `Authorization: Bearer KEY`; other keys get a 401 whose message quotes the key
    /// received (as OpenAI's does, partly), to check the client scrubs it.
    pub fn require_api_key(&self, key: &str) {
        lock(&self.state).required_key = Some(key.to_string());
    }

    /// Stops keeping request bodies (for benchmarks: millions of calls); they are still
    /// counted and validated.
    pub fn forget_requests(&self) {
        lock(&self.state).forget_requests = true;
    }

    /// Every request received, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        lock(&self.state).received
    }

    /// Replies still queued.
    pub fn remaining(&self) -> usize {
        lock(&self.state).replies.len()
    }
}

/// Checks the OpenAI rules on a request body; `Err` is the 400 message.
pub fn validate_request(body: &Value) -> Result<(), String> {
    if !body.get("model").is_some_and(Value::is_string) {
        return Err("you must provide a model parameter".into());
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("'messages' must be an array")?;
    if messages.is_empty() {
        return Err("'messages' must contain at least one message".into());
    }
    let mut pending: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content");
        match role {
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or(format!(
                        "messages[{i}]: a 'tool' message needs 'tool_call_id'"
                    ))?;
                let Some(pos) = pending.iter().position(|p| p == id) else {
                    return Err(format!(
                        "messages[{i}]: messages with role 'tool' must be a response to a preceding message with 'tool_calls' (no pending call with id '{id}')"
                    ));
                };
                pending.remove(pos);
                if !content.is_some_and(Value::is_string) {
                    return Err(format!("messages[{i}]: 'content' must be a string"));
                }
                continue;
            }
            "system" | "user" | "assistant" => {}
            other => return Err(format!("messages[{i}]: unknown role '{other}'")),
        }
        if !pending.is_empty() {
            return Err(format!(
                "messages[{i}]: an assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'; missing: {}",
                pending.join(", ")
            ));
        }
        if role == "assistant" {
            let calls = m.get("tool_calls").and_then(Value::as_array);
            let has_text = content.is_some_and(Value::is_string);
            if !has_text && calls.is_none_or(|c| c.is_empty()) {
                return Err(format!(
                    "messages[{i}]: an assistant message needs 'content' or 'tool_calls'"
                ));
            }
            let mut seen = HashSet::new();
            for c in calls.into_iter().flatten() {
                let id = c.get("id").and_then(Value::as_str).unwrap_or("");
                let name = c.pointer("/function/name").and_then(Value::as_str);
                let args = c.pointer("/function/arguments").and_then(Value::as_str);
                if id.is_empty() || name.is_none() || args.is_none() || !seen.insert(id) {
                    return Err(format!("messages[{i}]: malformed or duplicate tool call"));
                }
                pending.push(id.to_string());
            }
        } else if !content.is_some_and(Value::is_string) {
            return Err(format!("messages[{i}]: 'content' must be a string"));
        }
    }
    if !pending.is_empty() {
        return Err(format!(
            "an assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'; missing: {}",
            pending.join(", ")
        ));
    }
    Ok(())
}

async fn serve(mut socket: TcpStream, state: Arc<Mutex<State>>) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let Some(request) = read_request(&mut socket, &mut buf).await else {
            return;
        };
        let reply = decide(&state, request);
        let keep_going = match reply {
            Reply::Http {
                status,
                headers,
                body,
            } => write_http(&mut socket, status, &headers, &body).await,
            Reply::Sse { events, delay } => write_sse(&mut socket, &events, delay).await,
            Reply::Hang => {
                // Wait for the client to give up, then close.
                let mut sink = [0u8; 1024];
                while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
                false
            }
            Reply::Drop => false,
        };
        if !keep_going {
            return;
        }
    }
}

fn decide(state: &Mutex<State>, request: Recorded) -> Reply {
    let mut st = lock(state);
    let auth = request.header("authorization").map(str::to_string);
    let path_ok = request.path.ends_with("/chat/completions") && request.method == "POST";
    let body = request.body.clone();
    st.received += 1;
    if !st.forget_requests {
        st.requests.push(request);
    }
    if !path_ok {
        return Reply::status(404, "unknown endpoint");
    }
    if let Some(required) = &st.required_key {
        let given = auth
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("");
        if given != required {
            return Reply::status(
                401,
                &format!("Incorrect API key provided: {given}. You can find your API key in your account settings."),
            );
        }
    }
    if body.is_null() {
        return Reply::status(400, "the body is not valid JSON");
    }
    if let Err(message) = validate_request(&body) {
        return Reply::status(400, &message);
    }
    st.replies
        .pop_front()
        .or_else(|| st.fallback.clone())
        .unwrap_or_else(|| Reply::status(500, "the fake server has no scripted reply left"))
}

async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Recorded> {
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let mut tmp = [0u8; 8192];
        let n = socket.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let body_start = head_end + 4;
    while buf.len() < body_start + length {
        let mut tmp = [0u8; 8192];
        let n = socket.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = serde_json::from_slice(&buf[body_start..body_start + length]).unwrap_or(Value::Null);
    buf.drain(..body_start + length);
    Some(Recorded {
        method,
        path,
        headers,
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn write_http(
    socket: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &str,
) -> bool {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    socket.write_all(out.as_bytes()).await.is_ok()
}

async fn write_sse(socket: &mut TcpStream, events: &[String], delay: Duration) -> bool {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    for event in events {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let payload = format!("data: {event}\n\n");
        let framed = format!("{:x}\r\n{payload}\r\n", payload.len());
        if socket.write_all(framed.as_bytes()).await.is_err() {
            return false;
        }
        let _ = socket.flush().await;
    }
    socket.write_all(b"0\r\n\r\n").await.is_ok()
}
