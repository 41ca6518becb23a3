//! A JSON-schema validator for the subset that tool parameter schemas use.
//!
//! Supported keywords: `type` (one name or a list of `object`, `string`, `integer`, `number`,
//! `boolean`, `array`, `null`), `properties`, `required`, `additionalProperties` (a boolean),
//! `enum`, `minLength`/`maxLength` (in characters), `pattern` (see [`Pattern`]),
//! `minimum`/`maximum`, `items`, `minItems`/`maxItems`, and the annotations `description`,
//! `title`, `default` and `examples`, which are ignored. Any other keyword makes
//! [`Schema::compile`] fail, so a typo in a tool's schema is caught when the tool is
//! registered instead of silently accepting everything.
//!
//! Validation collects every violation (up to [`MAX_VIOLATIONS`]) as a precise message that
//! names the offending property: `amount: must be >= 1`,
//! `priority: must be one of low, medium, high, urgent`,
//! `missing required property "transaction_id"`, `unexpected property "foo"`.
//!
//! A whole-valued float such as `4999.0` is accepted where an `integer` is required and is
//! normalised to the integer `4999` in the returned value, because models often emit numbers
//! that way; anything else is checked strictly (no string-to-number coercion).

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use super::pattern::Pattern;

/// Most violations reported for one value; further ones are summarised in one message.
pub const MAX_VIOLATIONS: usize = 20;

/// Longest excerpt of a rejected name or value quoted back in a message, in characters.
const MAX_QUOTE: usize = 64;

/// The JSON types a schema can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Object,
    String,
    Integer,
    Number,
    Boolean,
    Array,
    Null,
}

impl JsonType {
    fn parse(s: &str) -> Option<JsonType> {
        Some(match s {
            "object" => JsonType::Object,
            "string" => JsonType::String,
            "integer" => JsonType::Integer,
            "number" => JsonType::Number,
            "boolean" => JsonType::Boolean,
            "array" => JsonType::Array,
            "null" => JsonType::Null,
            _ => return None,
        })
    }

    fn article_name(self) -> &'static str {
        match self {
            JsonType::Object => "an object",
            JsonType::String => "a string",
            JsonType::Integer => "an integer",
            JsonType::Number => "a number",
            JsonType::Boolean => "a boolean",
            JsonType::Array => "an array",
            JsonType::Null => "null",
        }
    }
}

/// The name of a value's JSON type, for messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A compiled parameter schema; build it with [`Schema::compile`].
#[derive(Debug, Clone, Default)]
pub struct Schema {
    types: Option<Vec<JsonType>>,
    properties: Vec<(String, Schema)>,
    required: Vec<String>,
    additional_properties: bool,
    enumeration: Option<Vec<Value>>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    pattern: Option<Pattern>,
    minimum: Option<Number>,
    maximum: Option<Number>,
    items: Option<Box<Schema>>,
    min_items: Option<u64>,
    max_items: Option<u64>,
}

const KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "items",
    "minItems",
    "maxItems",
    "description",
    "title",
    "default",
    "examples",
];

fn at(path: &str, msg: impl AsRef<str>) -> String {
    if path.is_empty() {
        msg.as_ref().to_owned()
    } else {
        format!("{path}: {}", msg.as_ref())
    }
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// `s` as a JSON string literal, cut to [`MAX_QUOTE`] characters (with `…` when cut), so
/// that model-supplied text is quoted unambiguously and without control characters.
pub(crate) fn quote(s: &str) -> String {
    let cut: String = s.chars().take(MAX_QUOTE).collect();
    let mut q = serde_json::to_string(&cut).unwrap_or_else(|_| "\"?\"".to_owned());
    if cut.len() < s.len() {
        q.insert(q.len() - 1, '…');
    }
    q
}

fn value_list(values: &[Value]) -> String {
    values
        .iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Exact comparison of two JSON numbers (integers compared as integers).
fn compare(a: &Number, b: &Number) -> Option<Ordering> {
    let int = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(a), int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// `n` as an integer when it is one, including whole-valued floats within `i64` range.
fn as_integer(n: &Number) -> Option<Number> {
    if n.is_i64() || n.is_u64() {
        return Some(n.clone());
    }
    let f = n.as_f64()?;
    // 2^63 is exactly representable; every whole float strictly inside the range fits i64.
    if f.fract() == 0.0 && f > -9.223_372_036_854_776e18 && f < 9.223_372_036_854_776e18 {
        Some(Number::from(f as i64))
    } else {
        None
    }
}

fn non_negative(v: &Value, key: &str) -> Result<u64, String> {
    v.as_u64()
        .ok_or_else(|| format!("{key} must be a non-negative integer"))
}

impl Schema {
    /// Compiles a schema, rejecting keywords and forms outside the supported subset.
    pub fn compile(schema: &Value) -> Result<Schema, String> {
        Self::compile_at(schema, "")
    }

    fn compile_at(schema: &Value, path: &str) -> Result<Schema, String> {
        let obj = schema
            .as_object()
            .ok_or_else(|| at(path, "a schema must be a JSON object"))?;
        let mut out = Schema {
            additional_properties: true,
            ..Schema::default()
        };
        for (key, v) in obj {
            let err = |m: String| at(path, m);
            match key.as_str() {
                "type" => {
                    let names: Vec<&str> = match v {
                        Value::String(s) => vec![s.as_str()],
                        Value::Array(a) => a
                            .iter()
                            .map(|t| {
                                t.as_str()
                                    .ok_or_else(|| err("type names must be strings".into()))
                            })
                            .collect::<Result<_, _>>()?,
                        _ => return Err(err("type must be a string or a list of strings".into())),
                    };
                    let types = names
                        .iter()
                        .map(|n| JsonType::parse(n).ok_or_else(|| err(format!("unknown type {n}"))))
                        .collect::<Result<Vec<_>, _>>()?;
                    if types.is_empty() {
                        return Err(err("type must name at least one type".into()));
                    }
                    out.types = Some(types);
                }
                "properties" => {
                    let props = v
                        .as_object()
                        .ok_or_else(|| err("properties must be an object".into()))?;
                    for (name, sub) in props {
                        let sub = Self::compile_at(sub, &child_path(path, name))?;
                        out.properties.push((name.clone(), sub));
                    }
                }
                "required" => {
                    let list = v
                        .as_array()
                        .ok_or_else(|| err("required must be a list of property names".into()))?;
                    for name in list {
                        let name = name
                            .as_str()
                            .ok_or_else(|| err("required must list strings".into()))?;
                        out.required.push(name.to_owned());
                    }
                }
                "additionalProperties" => {
                    out.additional_properties = v.as_bool().ok_or_else(|| {
                        err("only boolean additionalProperties is supported".into())
                    })?;
                }
                "enum" => {
                    let list = v
                        .as_array()
                        .filter(|a| !a.is_empty())
                        .ok_or_else(|| err("enum must be a non-empty list".into()))?;
                    out.enumeration = Some(list.clone());
                }
                "minLength" => out.min_length = Some(non_negative(v, key).map_err(err)?),
                "maxLength" => out.max_length = Some(non_negative(v, key).map_err(err)?),
                "minItems" => out.min_items = Some(non_negative(v, key).map_err(err)?),
                "maxItems" => out.max_items = Some(non_negative(v, key).map_err(err)?),
                "minimum" | "maximum" => {
                    let n = v
                        .as_number()
                        .ok_or_else(|| err(format!("{key} must be a number")))?
                        .clone();
                    if key == "minimum" {
                        out.minimum = Some(n);
                    } else {
                        out.maximum = Some(n);
                    }
                }
                "pattern" => {
                    let p = v
                        .as_str()
                        .ok_or_else(|| err("pattern must be a string".into()))?;
                    out.pattern =
                        Some(Pattern::compile(p).map_err(|m| err(format!("pattern {p}: {m}")))?);
                }
                "items" => {
                    out.items = Some(Box::new(Self::compile_at(v, &format!("{path}[]"))?));
                }
                k if KEYWORDS.contains(&k) => {}
                other => return Err(err(format!("the keyword {other} is not supported"))),
            }
        }
        if !out.additional_properties {
            if let Some(missing) = out
                .required
                .iter()
                .find(|r| !out.properties.iter().any(|(p, _)| p == *r))
            {
                return Err(at(
                    path,
                    format!("required property {missing} is not declared in properties"),
                ));
            }
        }
        Ok(out)
    }

    /// Validates `value`; returns it normalised (whole floats turned into integers where an
    /// integer is required) or every violation found.
    pub fn validate(&self, value: &Value) -> Result<Value, Vec<String>> {
        let mut violations = Vec::new();
        let normalised = self.check(value, "", &mut violations);
        if violations.is_empty() {
            return Ok(normalised);
        }
        if violations.len() > MAX_VIOLATIONS {
            let more = violations.len() - MAX_VIOLATIONS;
            violations.truncate(MAX_VIOLATIONS);
            violations.push(format!("... and {more} more violations"));
        }
        Err(violations)
    }

    /// Checks the type of `v`; returns the (possibly normalised) value when it matches.
    fn check_type(&self, v: &Value, path: &str, out: &mut Vec<String>) -> Option<Value> {
        let Some(types) = &self.types else {
            return Some(v.clone());
        };
        for t in types {
            let ok = match (t, v) {
                (JsonType::Object, Value::Object(_))
                | (JsonType::String, Value::String(_))
                | (JsonType::Number, Value::Number(_))
                | (JsonType::Boolean, Value::Bool(_))
                | (JsonType::Array, Value::Array(_))
                | (JsonType::Null, Value::Null) => true,
                (JsonType::Integer, Value::Number(n)) => {
                    if let Some(i) = as_integer(n) {
                        return Some(Value::Number(i));
                    }
                    false
                }
                _ => false,
            };
            if ok {
                return Some(v.clone());
            }
        }
        let expected = types
            .iter()
            .map(|t| t.article_name())
            .collect::<Vec<_>>()
            .join(" or ");
        out.push(at(
            path,
            format!("must be {expected}, got {}", type_name(v)),
        ));
        None
    }

    fn check(&self, v: &Value, path: &str, out: &mut Vec<String>) -> Value {
        let Some(v) = self.check_type(v, path, out) else {
            return v.clone();
        };
        if let Some(allowed) = &self.enumeration {
            if !allowed.contains(&v) {
                out.push(at(path, format!("must be one of {}", value_list(allowed))));
            }
        }
        match v {
            Value::String(s) => {
                self.check_string(&s, path, out);
                Value::String(s)
            }
            Value::Number(n) => {
                if let Some(min) = &self.minimum {
                    if compare(&n, min) == Some(Ordering::Less) {
                        out.push(at(path, format!("must be >= {min}")));
                    }
                }
                if let Some(max) = &self.maximum {
                    if compare(&n, max) == Some(Ordering::Greater) {
                        out.push(at(path, format!("must be <= {max}")));
                    }
                }
                Value::Number(n)
            }
            Value::Array(items) => {
                let len = items.len() as u64;
                if let Some(min) = self.min_items.filter(|&m| len < m) {
                    out.push(at(path, format!("must have at least {min} items")));
                }
                if let Some(max) = self.max_items.filter(|&m| len > m) {
                    out.push(at(path, format!("must have at most {max} items")));
                }
                match &self.items {
                    Some(schema) => Value::Array(
                        items
                            .iter()
                            .enumerate()
                            .map(|(i, item)| schema.check(item, &format!("{path}[{i}]"), out))
                            .collect(),
                    ),
                    None => Value::Array(items),
                }
            }
            Value::Object(map) => Value::Object(self.check_object(map, path, out)),
            other => other,
        }
    }

    fn check_string(&self, s: &str, path: &str, out: &mut Vec<String>) {
        let len = s.chars().count() as u64;
        if let Some(min) = self.min_length.filter(|&m| len < m) {
            let unit = if min == 1 { "character" } else { "characters" };
            out.push(at(path, format!("must be at least {min} {unit} long")));
        }
        if let Some(max) = self.max_length.filter(|&m| len > m) {
            let unit = if max == 1 { "character" } else { "characters" };
            out.push(at(
                path,
                format!("must be at most {max} {unit} long, got {len}"),
            ));
        }
        if let Some(p) = &self.pattern {
            if !p.is_match(s) {
                out.push(at(
                    path,
                    format!("{} does not match the pattern {}", quote(s), p.as_str()),
                ));
            }
        }
    }

    fn check_object(
        &self,
        map: Map<String, Value>,
        path: &str,
        out: &mut Vec<String>,
    ) -> Map<String, Value> {
        for r in &self.required {
            if !map.contains_key(r) {
                out.push(at(path, format!("missing required property {}", quote(r))));
            }
        }
        let mut result = Map::new();
        for (key, value) in map {
            match self.properties.iter().find(|(p, _)| *p == key) {
                Some((_, schema)) => {
                    let checked = schema.check(&value, &child_path(path, &key), out);
                    result.insert(key, checked);
                }
                None => {
                    if !self.additional_properties {
                        out.push(at(path, format!("unexpected property {}", quote(&key))));
                    }
                    result.insert(key, value);
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refund_schema() -> Schema {
        Schema::compile(&json!({
            "type": "object",
            "properties": {
                "transaction_id": {"type": "string", "pattern": "^pay_[A-Za-z0-9]{6,32}$"},
                "amount": {"type": "integer", "minimum": 1, "maximum": 10000000},
                "reason": {"type": "string", "minLength": 3, "maxLength": 10},
                "priority": {"type": "string", "enum": ["low", "medium", "high", "urgent"]},
                "tags": {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 2},
                "note": {"type": ["string", "null"]}
            },
            "required": ["transaction_id", "amount"],
            "additionalProperties": false
        }))
        .unwrap()
    }

    fn errors(v: Value) -> Vec<String> {
        refund_schema().validate(&v).unwrap_err()
    }

    #[test]
    fn valid_arguments_pass_and_whole_floats_become_integers() {
        let s = refund_schema();
        let ok = s
            .validate(&json!({"transaction_id": "pay_ABC123", "amount": 4999.0, "note": null}))
            .unwrap();
        assert_eq!(ok["amount"], json!(4999));
        assert!(ok["amount"].is_i64());
    }

    #[test]
    fn each_violation_is_named_precisely() {
        assert_eq!(
            errors(json!({"amount": 5})),
            vec!["missing required property \"transaction_id\""]
        );
        assert_eq!(
            errors(json!({"transaction_id": "pay_ABC123", "amount": 0})),
            vec!["amount: must be >= 1"]
        );
        assert_eq!(
            errors(json!({"transaction_id": "pay_ABC123", "amount": 10000001})),
            vec!["amount: must be <= 10000000"]
        );
        assert_eq!(
            errors(json!({"transaction_id": "pay_ABC123", "amount": "5"})),
            vec!["amount: must be an integer, got string"]
        );
        assert_eq!(
            errors(json!({"transaction_id": "pay_ABC123", "amount": 2.5})),
            vec!["amount: must be an integer, got number"]
        );
        assert_eq!(
            errors(json!({"transaction_id": "pay_ABC123", "amount": 1, "priority": "critical"})),
            vec!["priority: must be one of low, medium, high, urgent"]
        );
        assert_eq!(
            errors(json!({"transaction_id": "pay_ABC123", "amount": 1, "foo": 1})),
            vec!["unexpected property \"foo\""]
        );
        assert_eq!(
            errors(json!({"transaction_id": "ABC123", "amount": 1})),
            vec!["transaction_id: \"ABC123\" does not match the pattern ^pay_[A-Za-z0-9]{6,32}$"]
        );
        assert_eq!(
            errors(json!({"transaction_id": "pay_ABC123", "amount": 1, "reason": "no"})),
            vec!["reason: must be at least 3 characters long"]
        );
        assert_eq!(
            errors(json!({"transaction_id": "pay_ABC123", "amount": 1, "reason": "ééééééééééé"})),
            vec!["reason: must be at most 10 characters long, got 11"]
        );
        assert_eq!(
            errors(json!({"transaction_id": "pay_ABC123", "amount": 1, "tags": ["a", "", "c"]})),
            vec![
                "tags: must have at most 2 items",
                "tags[1]: must be at least 1 character long"
            ]
        );
        assert_eq!(
            errors(json!({"transaction_id": "pay_ABC123", "amount": 1, "note": 3})),
            vec!["note: must be a string or null, got integer"]
        );
        assert_eq!(errors(json!([1])), vec!["must be an object, got array"]);
    }

    #[test]
    fn several_violations_are_all_reported() {
        let e = errors(json!({"amount": -1, "bar": true, "priority": 1}));
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e.contains(&"missing required property \"transaction_id\"".to_owned()));
        assert!(e.contains(&"amount: must be >= 1".to_owned()));
        assert!(e.contains(&"unexpected property \"bar\"".to_owned()));
        assert!(e.contains(&"priority: must be a string, got integer".to_owned()));
    }

    #[test]
    fn violations_are_capped_and_quotes_are_safe() {
        let mut big = serde_json::Map::new();
        for i in 0..100 {
            big.insert(format!("extra{i}"), json!(i));
        }
        big.insert("transaction_id".into(), json!("pay_ABC123"));
        big.insert("amount".into(), json!(1));
        let e = errors(Value::Object(big));
        assert_eq!(e.len(), MAX_VIOLATIONS + 1);
        assert_eq!(e.last().unwrap(), "... and 80 more violations");

        let long = format!("\u{1b}[31m{}", "x".repeat(500));
        let e = errors(json!({"transaction_id": long, "amount": 1}));
        assert!(!e[0].contains('\u{1b}'), "{e:?}");
        assert!(e[0].len() < 200, "{e:?}");
        assert!(e[0].contains('…'));
    }

    #[test]
    fn huge_and_negative_numbers_compare_exactly() {
        assert_eq!(
            errors(json!({"transaction_id": "pay_ABC123", "amount": u64::MAX})),
            vec!["amount: must be <= 10000000"]
        );
        assert_eq!(
            errors(json!({"transaction_id": "pay_ABC123", "amount": i64::MIN})),
            vec!["amount: must be >= 1"]
        );
        assert_eq!(
            errors(json!({"transaction_id": "pay_ABC123", "amount": 1e300})),
            vec!["amount: must be an integer, got number"]
        );
    }

    #[test]
    fn unsupported_or_malformed_schemas_fail_to_compile() {
        for bad in [
            json!({"type": "object", "requried": ["x"]}),
            json!({"type": "strin"}),
            json!({"type": "object", "additionalProperties": {"type": "string"}}),
            json!({"type": "string", "pattern": "(a|b)"}),
            json!({"type": "string", "minLength": -1}),
            json!({"enum": []}),
            json!({"type": "object", "properties": {}, "required": ["x"], "additionalProperties": false}),
            json!({"oneOf": []}),
            json!("string"),
        ] {
            assert!(Schema::compile(&bad).is_err(), "{bad}");
        }
    }
}
