//! Shared helpers of the conversation-buffer tests: a summariser that keeps facts and filler
//! turns.
#![allow(dead_code)]

use std::sync::Arc;

use memex::llm::{ChatRequest, ChatResponse, LlmError, Message, ScriptedModel};

/// A summariser that keeps facts: the previous summary plus, for every transcript line, its
/// first four words and every word with a digit in it.
pub fn faithful_summary(request: &ChatRequest) -> Result<ChatResponse, LlmError> {
    let prompt = request.messages[1].content().unwrap_or("");
    let (head, transcript) = prompt
        .split_once("\n\nNew part of the conversation:\n")
        .ok_or_else(|| LlmError::BadResponse("unexpected prompt".into()))?;
    let previous = head.trim_start_matches("Previous summary:\n");
    let mut out = String::new();
    if previous != "(none yet)" {
        out.push_str(previous);
        out.push('\n');
    }
    for line in transcript.lines().filter(|l| !l.starts_with("Write the")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let kept: Vec<&str> = words
            .iter()
            .enumerate()
            .filter(|(i, w)| *i < 4 || w.chars().any(|c| c.is_ascii_digit()))
            .map(|(_, w)| *w)
            .collect();
        if !kept.is_empty() {
            out.push_str("- ");
            out.push_str(&kept.join(" "));
            out.push('\n');
        }
    }
    Ok(ChatResponse::text(out.trim_end()))
}

pub fn faithful() -> Arc<ScriptedModel> {
    Arc::new(ScriptedModel::from_fn(faithful_summary))
}

pub fn filler(i: usize) -> [Message; 2] {
    [
        Message::user(format!(
            "Question {i}: could you explain the settlement schedule for my account in more detail please?"
        )),
        Message::assistant(format!(
            "Answer {i}: settlements run every working day and funds reach your bank account the next day."
        )),
    ]
}
