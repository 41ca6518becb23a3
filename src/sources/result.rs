//! What the outside tools share about results: the object the model sees, and clipped text
//! for messages.

use serde_json::{json, Value};

/// `s` cut to `max` characters (with `…`).
pub(crate) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A source's answer as the object the model sees: objects as they are, anything else under
/// `result`; an answer too large for the prompt is refused.
pub(crate) fn result_object(value: Value) -> Result<Value, String> {
    let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(0);
    if size > 256 * 1024 {
        return Err(format!(
            "the result is {size} bytes; memex hands the model at most 256 KiB"
        ));
    }
    Ok(match value {
        Value::Object(_) => value,
        other => json!({ "result": other }),
    })
}
