//! References between steps: an argument value `{"$ref": "STEP.result.PATH"}` stands for a
//! part of step STEP's result, filled in just before the step runs.
//!
//! PATH is a dot-separated list of object keys and array indexes (`1.result.refunds.0.id`);
//! `STEP.result` alone is the whole result. A reference that cannot be resolved (the step
//! has no result, a key is missing) fails the step that uses it with a message naming the
//! missing part.

use std::collections::HashMap;

use serde_json::Value;

/// Why a `$ref` cannot be parsed or resolved: one sentence for the model (and the step's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RefError(pub String);

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    /// The step whose result is referenced.
    pub step: String,
    /// Keys and indexes into that result.
    pub path: Vec<String>,
}

/// The reference text of `v` when it is a reference object (`{"$ref": "..."}` and nothing
/// else).
pub fn as_ref_text(v: &Value) -> Option<&str> {
    match v {
        Value::Object(map) if map.len() == 1 => map.get("$ref").and_then(Value::as_str),
        _ => None,
    }
}

/// Parses `STEP.result[.PATH]`.
pub fn parse(text: &str) -> Result<Ref, RefError> {
    let text = text.trim();
    let mut parts = text.split('.');
    let step = parts.next().unwrap_or_default();
    if step.is_empty() || !super::plan::valid_step_id(step) {
        return Err(RefError(format!(
            "$ref {} must start with a step id followed by .result (e.g. \"1.result.merchant_id\")",
            super::plan::shown(text)
        )));
    }
    if parts.next() != Some("result") {
        return Err(RefError(format!(
            "$ref {} must have the form STEP.result or STEP.result.FIELD (e.g. \"1.result.merchant_id\")",
            super::plan::shown(text)
        )));
    }
    let path: Vec<String> = parts.map(str::to_string).collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(RefError(format!(
            "$ref {} has an empty field name",
            super::plan::shown(text)
        )));
    }
    Ok(Ref {
        step: step.to_string(),
        path,
    })
}

/// Every reference text inside `args`, in document order.
pub fn refs_in(args: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(args, &mut |t| out.push(t.to_string()));
    out
}

fn walk(v: &Value, f: &mut impl FnMut(&str)) {
    if let Some(t) = as_ref_text(v) {
        f(t);
        return;
    }
    match v {
        Value::Object(map) => map.values().for_each(|x| walk(x, f)),
        Value::Array(items) => items.iter().for_each(|x| walk(x, f)),
        _ => {}
    }
}

/// `args` with every reference replaced by the value it points to in `results` (step id →
/// result), or the first reference that cannot be resolved, as a sentence.
pub fn resolve(args: &Value, results: &HashMap<&str, &Value>) -> Result<Value, RefError> {
    if let Some(text) = as_ref_text(args) {
        let r = parse(text)?;
        let Some(mut cur) = results.get(r.step.as_str()).copied() else {
            return Err(RefError(format!(
                "$ref {}: step {} has no result",
                super::plan::shown(text),
                super::plan::shown(&r.step)
            )));
        };
        for (i, key) in r.path.iter().enumerate() {
            let next = match cur {
                Value::Object(map) => map.get(key),
                Value::Array(items) => key.parse::<usize>().ok().and_then(|k| items.get(k)),
                _ => None,
            };
            cur = match next {
                Some(v) => v,
                None => {
                    let have = match cur {
                        Value::Object(map) => {
                            let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
                            keys.truncate(12);
                            format!("it has {}", keys.join(", "))
                        }
                        Value::Array(items) => format!("it is a list of {}", items.len()),
                        other => format!("it is {}", kind(other)),
                    };
                    return Err(RefError(format!(
                        "$ref {}: step {}'s result has no {} ({have})",
                        super::plan::shown(text),
                        super::plan::shown(&r.step),
                        super::plan::shown(&format!("result.{}", r.path[..=i].join(".")))
                    )));
                }
            };
        }
        return Ok(cur.clone());
    }
    Ok(match args {
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map {
                out.insert(k.clone(), resolve(v, results)?);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| resolve(v, results))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_paths() {
        assert_eq!(
            parse("1.result.merchant_id").unwrap(),
            Ref {
                step: "1".into(),
                path: vec!["merchant_id".into()]
            }
        );
        assert_eq!(parse("lookup.result").unwrap().path.len(), 0);
        assert!(parse("1.output.x").is_err());
        assert!(parse("1.result..x").is_err());
        assert!(parse(".result").is_err());
    }

    #[test]
    fn resolves_nested_values_and_explains_misses() {
        let r1 = json!({"merchant_id": "MID001", "refunds": [{"id": "rfnd_1"}]});
        let results: HashMap<&str, &Value> = [("1", &r1)].into_iter().collect();
        let args = json!({
            "a": {"$ref": "1.result.merchant_id"},
            "b": [{"$ref": "1.result.refunds.0.id"}],
            "c": "plain",
        });
        assert_eq!(
            resolve(&args, &results).unwrap(),
            json!({"a": "MID001", "b": ["rfnd_1"], "c": "plain"})
        );
        let e = resolve(&json!({"x": {"$ref": "1.result.nope"}}), &results).unwrap_err();
        assert!(e.0.contains("has no") && e.0.contains("nope"), "{e}");
        let e = resolve(&json!({"x": {"$ref": "2.result"}}), &results).unwrap_err();
        assert!(e.0.contains("no result"), "{e}");
        assert_eq!(refs_in(&args).len(), 2);
    }
}
