//! Folding old turns into the rolling summary through a [`ChatModel`].

use crate::llm::{ChatModel, ChatRequest, FinishReason, Message};

use super::turns::render_transcript;

/// The summariser's instructions.
pub const SUMMARY_INSTRUCTIONS: &str = "You maintain the running summary of a support conversation between a merchant and a payments-support agent. \
Merge the previous summary and the new part of the conversation into ONE updated summary that replaces both. \
Keep, verbatim, every identifier (transaction, payment, order, refund, payout, settlement, dispute, ticket and merchant IDs), \
every amount with its currency, every date, every status, and every outcome, decision or promise made, and say what is still open. \
Drop greetings and small talk. Never invent facts. Write short factual sentences or bullet points, no preamble, \
and answer with the updated summary only.";

/// Heading of the summary section in the prompt built by the buffer.
pub const SUMMARY_HEADING: &str =
    "## Conversation so far (summary of earlier turns, which are no longer shown)";

/// Heading of the line of identifiers the guard re-attaches.
const KEPT_HEADING: &str = "Identifiers and amounts mentioned earlier (kept verbatim):";

/// Most identifiers the guard re-attaches.
const MAX_KEPT: usize = 48;

/// The request that asks the model to fold `messages` into `previous`.
pub fn summary_request(previous: &str, messages: &[Message], max_tokens: u32) -> ChatRequest {
    let previous = if previous.trim().is_empty() {
        "(none yet)"
    } else {
        previous
    };
    let user = format!(
        "Previous summary:\n{previous}\n\nNew part of the conversation:\n{}\nWrite the updated summary.",
        render_transcript(messages)
    );
    ChatRequest::new(vec![
        Message::system(SUMMARY_INSTRUCTIONS),
        Message::user(user),
    ])
    .with_temperature(0.0)
    .with_max_tokens(max_tokens)
}

/// Runs the summariser; `Err` says why its answer cannot be used.
pub async fn summarise(
    model: &dyn ChatModel,
    previous: &str,
    messages: &[Message],
    max_tokens: u32,
    preserve_identifiers: bool,
) -> Result<String, String> {
    let request = summary_request(previous, messages, max_tokens);
    let response = model
        .chat(request)
        .await
        .map_err(|e| format!("the summariser failed: {e}"))?;
    if response.finish_reason == FinishReason::Length {
        return Err(format!(
            "the summary was cut off at {max_tokens} tokens; keeping the raw turns"
        ));
    }
    let summary = response.content.unwrap_or_default();
    let summary = summary.trim();
    if summary.is_empty() {
        return Err("the summariser returned an empty summary".into());
    }
    if !preserve_identifiers {
        return Ok(summary.to_string());
    }
    let mut sources = render_transcript(messages);
    sources.push('\n');
    sources.push_str(previous);
    Ok(keep_identifiers(summary, &sources))
}

/// Identifier-like tokens of `text`, in order of first appearance: tokens with a digit that are
/// at least four characters long or also contain a letter (`pay_9XK2`, `₹1,250.00`,
/// `2024-05-01`, `m42`).
pub fn identifiers(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for raw in text.split(|c: char| c.is_whitespace() || "\"'`()[]{}<>;=|:".contains(c)) {
        let token = raw.trim_matches(|c: char| ",.!?*".contains(c));
        let has_digit = token.chars().any(|c| c.is_ascii_digit());
        let has_letter = token.chars().any(char::is_alphabetic);
        if has_digit
            && (token.chars().count() >= 4 || has_letter)
            && !out.iter().any(|t| t == token)
        {
            out.push(token.to_string());
        }
    }
    out
}

/// The guard: any identifier or amount of `sources` that `summary` lost is re-attached on a
/// labelled line, so a sloppy summariser cannot silently drop a transaction ID.
pub fn keep_identifiers(summary: &str, sources: &str) -> String {
    // The old guard line is rebuilt, not nested.
    let body = summary
        .lines()
        .filter(|line| !line.contains(KEPT_HEADING))
        .collect::<Vec<_>>()
        .join("\n");
    let body = body.trim_end();
    let missing: Vec<String> = identifiers(sources)
        .into_iter()
        .filter(|t| !body.contains(t.as_str()))
        .take(MAX_KEPT)
        .collect();
    if missing.is_empty() {
        return body.to_string();
    }
    format!("{body}\n{KEPT_HEADING} {}", missing.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_found() {
        let ids = identifiers(
            r#"Merchant: refund ₹1,250.00 for pay_9XK2, please. {"id":"rf_77","n":3} on 2024-05-01."#,
        );
        assert_eq!(ids, vec!["₹1,250.00", "pay_9XK2", "rf_77", "2024-05-01"]);
    }

    #[test]
    fn guard_reattaches_only_what_was_lost() {
        let s = keep_identifiers(
            "Refund for pay_9XK2 is pending.",
            "pay_9XK2 ₹1,250.00 rf_77",
        );
        assert_eq!(
            s,
            format!("Refund for pay_9XK2 is pending.\n{KEPT_HEADING} ₹1,250.00, rf_77")
        );
        // Re-running on its own output does not nest the line.
        let again = keep_identifiers(&s, "pay_9XK2 ₹1,250.00 rf_77");
        assert_eq!(again, s);
        assert_eq!(
            keep_identifiers("all of pay_9XK2", "pay_9XK2"),
            "all of pay_9XK2"
        );
    }
}
