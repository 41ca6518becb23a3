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

/// `url` as messages may show it: without credentials (`user:pass@`) or query string.
pub(crate) fn shown_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let rest = match rest.split_once('/') {
        Some((host, path)) => format!("{}/{path}", host.rsplit('@').next().unwrap_or(host)),
        None => rest.rsplit('@').next().unwrap_or(rest).to_string(),
    };
    match scheme {
        Some(s) => format!("{s}://{rest}"),
        None => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_secrets() {
        assert_eq!(
            shown_url("https://user:tok@api.example.com/v1/openapi.json?key=abc"),
            "https://api.example.com/v1/openapi.json"
        );
        assert_eq!(
            shown_url("http://127.0.0.1:9/mcp"),
            "http://127.0.0.1:9/mcp"
        );
        assert_eq!(clip("héllo", 2), "hé…");
    }
}
