//! Turns: the units the buffer keeps or compresses whole.
//!
//! A turn starts at a user message and runs to the next one, so it holds the question, every
//! tool exchange (assistant `tool_calls` plus their `tool` results) and the answer. A user
//! message that arrives while tool calls are still unanswered does *not* start a turn, so an
//! exchange can never be split, whatever order the messages came in. Messages before the first
//! user message form a turn of their own.

use std::ops::Range;

use crate::llm::Message;

/// The index ranges of the turns of `messages`, in order, covering every message.
pub fn turn_ranges(messages: &[Message]) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut pending: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match m {
            Message::User { .. } if pending.is_empty() && i > start => {
                ranges.push(start..i);
                start = i;
            }
            Message::Assistant { tool_calls, .. } if !tool_calls.is_empty() => {
                pending = tool_calls.iter().map(|c| c.id.as_str()).collect();
            }
            Message::Tool { tool_call_id, .. } => {
                pending.retain(|id| id != tool_call_id);
            }
            _ => {}
        }
    }
    if start < messages.len() {
        ranges.push(start..messages.len());
    }
    ranges
}

/// Renders messages as a plain transcript for the summariser.
pub fn render_transcript<'a>(messages: impl IntoIterator<Item = &'a Message>) -> String {
    let mut out = String::new();
    for m in messages {
        match m {
            Message::System { content } => {
                out.push_str("System note: ");
                out.push_str(content);
            }
            Message::User { content } => {
                out.push_str("Merchant: ");
                out.push_str(content);
            }
            Message::Assistant {
                content,
                tool_calls,
            } => {
                let mut first = true;
                if let Some(text) = content.as_deref().filter(|t| !t.trim().is_empty()) {
                    out.push_str("Agent: ");
                    out.push_str(text);
                    first = false;
                }
                for call in tool_calls {
                    if !first {
                        out.push('\n');
                    }
                    first = false;
                    out.push_str(&format!(
                        "Agent called tool {}({}) [call {}]",
                        call.function.name, call.function.arguments, call.id
                    ));
                }
            }
            Message::Tool {
                tool_call_id,
                content,
            } => {
                out.push_str(&format!("Tool result [call {tool_call_id}]: {content}"));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolCall;

    fn call(id: &str) -> Message {
        Message::assistant_tool_calls(vec![ToolCall::new(id, "lookup", "{}")])
    }

    #[test]
    fn turns_start_at_user_messages() {
        let m = vec![
            Message::assistant("Hello, how can I help?"),
            Message::user("a"),
            call("c1"),
            Message::tool("c1", "r"),
            Message::assistant("done"),
            Message::user("b"),
            Message::assistant("ok"),
        ];
        assert_eq!(turn_ranges(&m), vec![0..1, 1..5, 5..7]);
        assert_eq!(turn_ranges(&[]), Vec::<Range<usize>>::new());
    }

    #[test]
    fn a_user_message_inside_an_unanswered_exchange_does_not_split_it() {
        let m = vec![
            Message::user("a"),
            call("c1"),
            Message::user("hurry up"),
            Message::tool("c1", "r"),
            Message::user("b"),
        ];
        assert_eq!(turn_ranges(&m), vec![0..4, 4..5]);
    }

    #[test]
    fn transcript_mentions_calls_and_results() {
        let t = render_transcript(&[
            Message::user("status of pay_1?"),
            Message::assistant_tool_calls(vec![ToolCall::new("c9", "lookup", r#"{"id":"pay_1"}"#)]),
            Message::tool("c9", r#"{"status":"settled"}"#),
        ]);
        assert!(t.contains("Merchant: status of pay_1?"));
        assert!(t.contains(r#"Agent called tool lookup({"id":"pay_1"}) [call c9]"#));
        assert!(t.contains(r#"Tool result [call c9]: {"status":"settled"}"#));
    }
}
