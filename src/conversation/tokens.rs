//! Token counting for the budget.
//!
//! The default, [`EstimatedTokens`], is a documented estimate and not a real tokenizer: the
//! chat model (Llama 3.3 on Groq by default) is remote and its tokenizer is not shipped with
//! memex. It counts `ceil(chars / 4)` per text — OpenAI's rule of thumb for English — plus
//! [`MESSAGE_OVERHEAD`] tokens per message for the role and separators, and the name, id and
//! arguments of tool calls. Identifier-heavy text (payment IDs, JSON) tokenises denser than
//! English, so keep slack between the budget and the model's context window, or plug a real
//! tokenizer in through [`TokenCounter`].

use crate::llm::Message;

/// Tokens added per message for the role and the chat template's separators.
pub const MESSAGE_OVERHEAD: usize = 4;

/// Counts tokens of text.
pub trait TokenCounter: Send + Sync {
    /// Tokens of `text`.
    fn count(&self, text: &str) -> usize;

    /// Tokens of one message: its content, its tool calls (name, id, arguments) or its
    /// `tool_call_id`, plus [`MESSAGE_OVERHEAD`].
    fn message(&self, message: &Message) -> usize {
        let mut n = MESSAGE_OVERHEAD + message.content().map_or(0, |c| self.count(c));
        for call in message.tool_calls() {
            n += MESSAGE_OVERHEAD
                + self.count(&call.id)
                + self.count(&call.function.name)
                + self.count(&call.function.arguments);
        }
        if let Message::Tool { tool_call_id, .. } = message {
            n += self.count(tool_call_id);
        }
        n
    }
}

/// The documented estimate: `ceil(chars / 4)` tokens per text (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct EstimatedTokens;

impl TokenCounter for EstimatedTokens {
    fn count(&self, text: &str) -> usize {
        text.chars().count().div_ceil(4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolCall;

    #[test]
    fn estimate_is_chars_over_four_plus_overhead() {
        let c = EstimatedTokens;
        assert_eq!(c.count(""), 0);
        assert_eq!(c.count("abcd"), 1);
        assert_eq!(c.count("abcde"), 2);
        assert_eq!(c.message(&Message::user("abcdefgh")), 2 + MESSAGE_OVERHEAD);
        let call = Message::assistant_tool_calls(vec![ToolCall::new("c1", "f", "{}")]);
        assert_eq!(c.message(&call), MESSAGE_OVERHEAD * 2 + 3);
        assert_eq!(c.message(&Message::tool("c1", "ok")), MESSAGE_OVERHEAD + 2);
    }
}
