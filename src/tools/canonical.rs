//! Canonical JSON text: one string per JSON value, whatever the key order or whitespace of the
//! text it was parsed from. The agent uses it to detect repeated tool calls and as a cache key.

use serde_json::Value;

/// Serialises `value` compactly with object keys sorted (by their UTF-8 bytes) at every level.
///
/// Two values that are equal as JSON give the same string. Numbers keep `serde_json`'s
/// formatting, so `1` and `1.0` differ; arguments validated by
/// [`ToolRegistry::validate`](super::ToolRegistry::validate) have whole floats already
/// normalised to integers where the schema asks for an integer.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_string(s: &str, out: &mut String) {
    // Serialising a string cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, out),
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a: Value = serde_json::from_str(
            r#"{ "b": 1, "a": {"y": [1, {"d": null, "c": true}], "x": "é\n"} }"#,
        )
        .unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":{"x":"é\n","y":[1,{"c":true,"d":null}]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":"é\n","y":[1,{"c":true,"d":null}]},"b":1}"#
        );
    }

    #[test]
    fn different_values_differ() {
        let a = serde_json::json!({"transaction_id": "pay_ABC123", "amount": 100});
        let b = serde_json::json!({"transaction_id": "pay_ABC123", "amount": 101});
        assert_ne!(canonical_json(&a), canonical_json(&b));
        assert_ne!(
            canonical_json(&serde_json::json!([1, 2])),
            canonical_json(&serde_json::json!([2, 1]))
        );
    }
}
