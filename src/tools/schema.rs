//! Tool parameter schemas: JSON Schema draft 2020-12, enforced by the `jsonschema` crate,
//! with memex's rules around it.
//!
//! * **What a schema may say.** Every draft 2020-12 keyword that `jsonschema` enforces works,
//!   including `$defs`/`$ref`, `anyOf`/`oneOf`/`allOf`, `const` and `format`, so schemas
//!   written by `schemars` or handed over by an MCP server register as they are. Patterns run
//!   on the `regex` crate with ECMA-262 meanings (`\d` is ASCII `[0-9]`) in linear time.
//! * **What memex refuses at registration** (a schema it could not enforce would silently
//!   accept everything): a keyword no draft defines (a typo such as `requried`; `x-` vendor
//!   extensions and the usual annotations are allowed), an unknown `format`, a pattern the
//!   engine cannot run (look-around, back-references), a `$ref` outside the schema itself,
//!   an empty `enum`, and a `required` property that `additionalProperties: false` forbids.
//! * **Messages for the model.** Each violation becomes one precise sentence naming the
//!   offending property: `amount: must be >= 1`,
//!   `priority: must be one of low, medium, high, urgent`,
//!   `missing required property "transaction_id"`, `unexpected property "foo"`. At most
//!   [`MAX_VIOLATIONS`] are listed; text the model wrote is quoted with [`quote`].
//! * **Integer normalisation.** A whole-valued float such as `4999.0` where the schema asks for
//!   an `integer` becomes the integer `4999` in the returned value, because models often
//!   emit numbers that way; nothing else is coerced.

use std::sync::Arc;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use jsonschema::{Draft, JsonType, PatternOptions, ValidationError};
use serde_json::{Map, Number, Value};

/// Most violations reported for one value; further ones are summarised in one message.
pub const MAX_VIOLATIONS: usize = 20;

/// Longest excerpt of a rejected name or value quoted back in a message, in characters.
const MAX_QUOTE: usize = 64;

/// Deepest `$ref` chain followed when normalising integers (guards against cycles).
const MAX_REF_DEPTH: usize = 32;

/// Keywords of draft 2020-12 (and the older spellings `definitions`/`dependencies`) plus the
/// common annotations. Anything else in a schema is refused unless it starts with `x-`.
const KNOWN_KEYWORDS: &[&str] = &[
    "$schema",
    "$id",
    "$ref",
    "$defs",
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "$vocabulary",
    "$comment",
    "definitions",
    "type",
    "enum",
    "const",
    "properties",
    "patternProperties",
    "additionalProperties",
    "unevaluatedProperties",
    "propertyNames",
    "required",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "minProperties",
    "maxProperties",
    "items",
    "prefixItems",
    "contains",
    "minContains",
    "maxContains",
    "unevaluatedItems",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "contentEncoding",
    "contentMediaType",
    "contentSchema",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "nullable",
];

/// Keywords whose value is one subschema.
const SCHEMA_KEYWORDS: &[&str] = &[
    "additionalProperties",
    "unevaluatedProperties",
    "propertyNames",
    "items",
    "contains",
    "unevaluatedItems",
    "contentSchema",
    "not",
    "if",
    "then",
    "else",
];

/// Keywords whose value maps names to subschemas.
const SCHEMA_MAP_KEYWORDS: &[&str] = &[
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
];

/// Keywords whose value is a list of subschemas.
const SCHEMA_LIST_KEYWORDS: &[&str] = &["prefixItems", "allOf", "anyOf", "oneOf"];

/// Builds the `jsonschema` validator memex uses: draft 2020-12, formats asserted (unknown ones
/// refused), patterns on the `regex` crate, and no way to fetch remote documents.
pub(crate) fn build_validator(schema: &Value) -> Result<jsonschema::Validator, String> {
    let mut options = jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .should_ignore_unknown_formats(false)
        .with_pattern_options(PatternOptions::regex());
    for name in NUMERIC_FORMATS {
        // `format` only constrains strings; on numbers these names are annotations.
        options = options.with_format(name, |_: &str| true);
    }
    options.build(schema).map_err(|e| describe_schema_error(&e))
}

/// The numeric `format` names `schemars` writes (`uint32`, `double`, ...). They describe
/// numbers, which `format` does not constrain, so they are accepted as annotations; the ranges
/// come with `minimum`/`maximum`.
const NUMERIC_FORMATS: [&str; 12] = [
    "int8", "int16", "int32", "int64", "int", "uint8", "uint16", "uint32", "uint64", "uint",
    "float", "double",
];

/// One sentence for a schema that `jsonschema` refused, naming where in the schema.
fn describe_schema_error(e: &ValidationError<'_>) -> String {
    let at = e.instance_path().as_str();
    let msg = e.to_string();
    let msg: String = msg.chars().take(200).collect();
    if at.is_empty() {
        msg
    } else {
        format!("at {at}: {msg}")
    }
}

/// A compiled parameter schema; build it with [`Schema::compile`]. Cloning is cheap.
#[derive(Clone)]
pub struct Schema {
    source: Arc<Value>,
    validator: Arc<jsonschema::Validator>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("source", &self.source)
            .finish()
    }
}

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

/// A JSON value for a message: strings bare, anything else as compact JSON, cut to length.
fn show(v: &Value) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > MAX_QUOTE {
        let cut: String = text.chars().take(MAX_QUOTE).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn value_list(values: &Value) -> String {
    match values {
        Value::Array(items) => items.iter().map(show).collect::<Vec<_>>().join(", "),
        other => show(other),
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

fn article_name(t: JsonType) -> &'static str {
    match t {
        JsonType::Object => "an object",
        JsonType::String => "a string",
        JsonType::Integer => "an integer",
        JsonType::Number => "a number",
        JsonType::Boolean => "a boolean",
        JsonType::Array => "an array",
        JsonType::Null => "null",
    }
}

/// `n` as an integer when it is a whole-valued float within `i64` range.
fn whole_float(n: &Number) -> Option<Number> {
    if !n.is_f64() {
        return None;
    }
    let f = n.as_f64()?;
    // 2^63 is exactly representable; every whole float strictly inside the range fits i64.
    if f.fract() == 0.0 && f > -9.223_372_036_854_776e18 && f < 9.223_372_036_854_776e18 {
        Some(Number::from(f as i64))
    } else {
        None
    }
}

/// Checks what `jsonschema` would accept but memex cannot enforce or considers a mistake.
fn check_supported(schema: &Value, path: &str) -> Result<(), String> {
    let obj = match schema {
        Value::Bool(_) => return Ok(()),
        Value::Object(obj) => obj,
        _ => return Err(at(path, "a schema must be a JSON object or a boolean")),
    };
    let here = |m: String| at(path, m);
    for (key, v) in obj {
        let key = key.as_str();
        if !KNOWN_KEYWORDS.contains(&key) && !key.starts_with("x-") {
            return Err(here(format!("unknown keyword {}", quote(key))));
        }
        if SCHEMA_KEYWORDS.contains(&key) {
            check_supported(v, &child_path(path, key))?;
        } else if SCHEMA_MAP_KEYWORDS.contains(&key) {
            let map = v
                .as_object()
                .ok_or_else(|| here(format!("{key} must be an object")))?;
            for (name, sub) in map {
                check_supported(sub, &child_path(&child_path(path, key), name))?;
            }
        } else if SCHEMA_LIST_KEYWORDS.contains(&key) {
            let list = v
                .as_array()
                .ok_or_else(|| here(format!("{key} must be a list of schemas")))?;
            for (i, sub) in list.iter().enumerate() {
                check_supported(sub, &format!("{}[{i}]", child_path(path, key)))?;
            }
        }
        match key {
            "$ref" | "$dynamicRef" => {
                let target = v.as_str().unwrap_or_default();
                if !target.starts_with('#') {
                    return Err(here(format!(
                        "{key} {} points outside the schema; only local references (#/...) are supported",
                        quote(target)
                    )));
                }
            }
            "enum" if v.as_array().is_some_and(Vec::is_empty) => {
                return Err(here("enum must be a non-empty list".into()));
            }
            _ => {}
        }
    }
    if obj.get("additionalProperties") == Some(&Value::Bool(false))
        && !obj.contains_key("patternProperties")
    {
        let declared = obj.get("properties").and_then(Value::as_object);
        let required = obj.get("required").and_then(Value::as_array);
        for name in required.into_iter().flatten().filter_map(Value::as_str) {
            if !declared.is_some_and(|d| d.contains_key(name)) {
                return Err(here(format!(
                    "required property {name} is not declared in properties"
                )));
            }
        }
    }
    Ok(())
}

/// A schema (or pattern) memex cannot enforce: one sentence saying where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(pub String);

impl Schema {
    /// Compiles a draft 2020-12 schema, refusing what memex cannot enforce (see the module
    /// documentation) with one sentence saying where and why.
    pub fn compile(schema: &Value) -> Result<Schema, SchemaError> {
        check_supported(schema, "").map_err(SchemaError)?;
        let validator = build_validator(schema).map_err(SchemaError)?;
        Ok(Schema {
            source: Arc::new(schema.clone()),
            validator: Arc::new(validator),
        })
    }

    /// Validates `value`; returns it normalised (whole floats turned into integers where an
    /// integer is required) or every violation found.
    pub fn validate(&self, value: &Value) -> Result<Value, Vec<String>> {
        let mut normalised = value.clone();
        self.normalise(&self.source, &mut normalised, 0);
        let mut found = Vec::new();
        for error in self.validator.iter_errors(&normalised) {
            found.extend(describe(&error));
            if found.len() > MAX_VIOLATIONS * 4 {
                break;
            }
        }
        // A value of the wrong type gets one message, not one per keyword it also fails.
        let mistyped: Vec<String> = found
            .iter()
            .filter(|v| v.wrong_type)
            .map(|v| v.path.clone())
            .collect();
        let mut violations: Vec<String> = found
            .into_iter()
            .filter(|v| v.wrong_type || !mistyped.contains(&v.path))
            .map(|v| at(&v.path, &v.message))
            .collect();
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

    /// The subschema a local `$ref` points to.
    fn resolve<'a>(&'a self, reference: &str) -> Option<&'a Value> {
        let pointer = reference.strip_prefix('#')?;
        self.source.pointer(pointer)
    }

    /// Turns whole floats into integers wherever `schema` (following `$ref`s and the
    /// branches of `allOf`/`anyOf`/`oneOf`) asks for an integer.
    fn normalise(&self, schema: &Value, value: &mut Value, depth: usize) {
        let Some(obj) = schema.as_object() else {
            return;
        };
        if depth > MAX_REF_DEPTH {
            return;
        }
        if let Some(target) = obj
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| self.resolve(r))
        {
            self.normalise(target, value, depth + 1);
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            for branch in obj.get(key).and_then(Value::as_array).into_iter().flatten() {
                self.normalise(branch, value, depth + 1);
            }
        }
        match value {
            Value::Number(n) => {
                let wants_integer = match obj.get("type") {
                    Some(Value::String(t)) => t == "integer",
                    Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                    _ => false,
                };
                if wants_integer {
                    if let Some(i) = whole_float(n) {
                        *n = i;
                    }
                }
            }
            Value::Object(map) => self.normalise_object(obj, map, depth),
            Value::Array(items) => {
                let prefix = obj.get("prefixItems").and_then(Value::as_array);
                let prefix_len = prefix.map_or(0, Vec::len);
                for (i, item) in items.iter_mut().enumerate() {
                    match prefix.and_then(|p| p.get(i)) {
                        Some(sub) => self.normalise(sub, item, depth + 1),
                        None if i >= prefix_len => {
                            if let Some(sub) = obj.get("items") {
                                self.normalise(sub, item, depth + 1);
                            }
                        }
                        None => {}
                    }
                }
            }
            _ => {}
        }
    }

    fn normalise_object(
        &self,
        schema: &Map<String, Value>,
        map: &mut Map<String, Value>,
        depth: usize,
    ) {
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        for (key, item) in map.iter_mut() {
            match properties.and_then(|p| p.get(key)) {
                Some(sub) => self.normalise(sub, item, depth + 1),
                None => {
                    if let Some(sub) = additional {
                        self.normalise(sub, item, depth + 1);
                    }
                }
            }
        }
    }
}

/// The instance path of an error as `a.b[2].c` (empty at the top level).
fn instance_path(error: &ValidationError<'_>) -> String {
    let mut out = String::new();
    for segment in error.instance_path().segments() {
        match segment {
            LocationSegment::Property(name) => {
                let name: &str = &name;
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            LocationSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn characters(n: u64) -> &'static str {
    if n == 1 {
        "character"
    } else {
        "characters"
    }
}

/// One violation: where, whether the value had the wrong type, and the sentence.
struct Violation {
    path: String,
    wrong_type: bool,
    message: String,
}

/// The model-readable violations for one `jsonschema` error (several for a list of unexpected
/// properties).
fn describe(error: &ValidationError<'_>) -> Vec<Violation> {
    let path = instance_path(error);
    let instance: &Value = error.instance();
    let wrong_type = matches!(error.kind(), ValidationErrorKind::Type { .. });
    let one = |message: String| {
        vec![Violation {
            path: path.clone(),
            wrong_type,
            message,
        }]
    };
    match error.kind() {
        ValidationErrorKind::Required { property } => one(format!(
            "missing required property {}",
            quote(property.as_str().unwrap_or_default())
        )),
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => unexpected
            .iter()
            .map(|name| Violation {
                path: path.clone(),
                wrong_type: false,
                message: format!("unexpected property {}", quote(name)),
            })
            .collect(),
        ValidationErrorKind::Type { kind } => {
            let mut types: Vec<JsonType> = match kind {
                TypeKind::Single(t) => vec![*t],
                TypeKind::Multiple(set) => set.iter().collect(),
            };
            // "a string or null" reads better than "null or a string".
            types.sort_by_key(|t| *t == JsonType::Null);
            let expected = types
                .into_iter()
                .map(article_name)
                .collect::<Vec<_>>()
                .join(" or ");
            one(format!("must be {expected}, got {}", type_name(instance)))
        }
        ValidationErrorKind::Enum { options } => {
            one(format!("must be one of {}", value_list(options)))
        }
        ValidationErrorKind::Constant { expected_value } => {
            one(format!("must be {}", show(expected_value)))
        }
        ValidationErrorKind::Minimum { limit } => one(format!("must be >= {limit}")),
        ValidationErrorKind::Maximum { limit } => one(format!("must be <= {limit}")),
        ValidationErrorKind::ExclusiveMinimum { limit } => one(format!("must be > {limit}")),
        ValidationErrorKind::ExclusiveMaximum { limit } => one(format!("must be < {limit}")),
        ValidationErrorKind::MultipleOf { multiple_of } => {
            one(format!("must be a multiple of {multiple_of}"))
        }
        ValidationErrorKind::MinLength { limit } => one(format!(
            "must be at least {limit} {} long",
            characters(*limit)
        )),
        ValidationErrorKind::MaxLength { limit } => {
            let len = instance.as_str().map_or(0, |s| s.chars().count());
            one(format!(
                "must be at most {limit} {} long, got {len}",
                characters(*limit)
            ))
        }
        ValidationErrorKind::Pattern { pattern } => one(format!(
            "{} does not match the pattern {pattern}",
            quote(instance.as_str().unwrap_or_default())
        )),
        ValidationErrorKind::Format { format } => one(format!(
            "{} is not a valid {format}",
            quote(instance.as_str().unwrap_or_default())
        )),
        ValidationErrorKind::MinItems { limit } => one(format!("must have at least {limit} items")),
        ValidationErrorKind::MaxItems { limit } => one(format!("must have at most {limit} items")),
        ValidationErrorKind::UniqueItems => one("must not contain duplicate items".into()),
        ValidationErrorKind::MinProperties { limit } => {
            one(format!("must have at least {limit} properties"))
        }
        ValidationErrorKind::MaxProperties { limit } => {
            one(format!("must have at most {limit} properties"))
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            let forms: Vec<String> = context
                .iter()
                .enumerate()
                .map(|(i, errors)| {
                    let first = errors
                        .first()
                        .and_then(|e| describe(e).into_iter().next())
                        .map(|v| {
                            if v.path == path {
                                v.message
                            } else {
                                at(&v.path, v.message)
                            }
                        })
                        .unwrap_or_else(|| "no details".into());
                    format!("form {}: {first}", i + 1)
                })
                .collect();
            one(format!(
                "must match one of the allowed forms ({})",
                forms.join("; ")
            ))
        }
        ValidationErrorKind::OneOfMultipleValid { .. } => {
            one("matches more than one of the allowed forms; it must match exactly one".into())
        }
        ValidationErrorKind::FalseSchema => one("is not allowed".into()),
        ValidationErrorKind::Not { .. } => one("matches a form that is not allowed".into()),
        ValidationErrorKind::Contains => one("does not contain any allowed item".into()),
        other => one(format!("fails the {} rule of the schema", other.keyword())),
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
        // A whole float too large for an integer is still a whole number to JSON Schema.
        assert_eq!(
            errors(json!({"transaction_id": "pay_ABC123", "amount": 1e300})),
            vec!["amount: must be <= 10000000"]
        );
    }

    #[test]
    fn unsupported_or_malformed_schemas_fail_to_compile() {
        for bad in [
            json!({"type": "object", "requried": ["x"]}),
            json!({"type": "strin"}),
            json!({"type": "string", "pattern": "(?=a)b"}),
            json!({"type": "string", "format": "no-such-format"}),
            json!({"$ref": "https://example.com/schema.json"}),
            json!({"type": "string", "minLength": -1}),
            json!({"enum": []}),
            json!({"type": "object", "properties": {}, "required": ["x"], "additionalProperties": false}),
            json!({"oneOf": []}),
            json!("string"),
        ] {
            assert!(Schema::compile(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refusals_say_where_and_why() {
        let e = Schema::compile(
            &json!({"type": "object", "properties": {"x": {"type": "string", "requried": true}}}),
        )
        .unwrap_err();
        assert_eq!(e.0, "properties.x: unknown keyword \"requried\"");
        let e = Schema::compile(&json!({"type": "object", "properties": {"x": {"type": "strin"}}}))
            .unwrap_err();
        assert!(e.0.contains("/properties/x/type"), "{e}");
        // Vendor extensions are allowed.
        Schema::compile(&json!({"type": "object", "x-origin": "mcp"})).unwrap();
    }

    #[test]
    fn refs_any_of_const_and_format_are_enforced() {
        let s = Schema::compile(&json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "amount": {"$ref": "#/$defs/Cents"},
                "kind": {"const": "refund"},
                "email": {"type": "string", "format": "email"},
                "target": {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^\\d{3}$"}]}
            },
            "$defs": {"Cents": {"type": "integer", "minimum": 1}}
        }))
        .unwrap();
        let ok = s
            .validate(&json!({"amount": 12.0, "kind": "refund", "email": "a@b.co", "target": 7.0}))
            .unwrap();
        assert!(ok["amount"].is_i64() && ok["target"].is_i64(), "{ok}");
        let mut e = s
            .validate(&json!({"amount": 0, "kind": "payout", "email": "nope", "target": "12a"}))
            .unwrap_err();
        e.sort();
        assert_eq!(
            e,
            vec![
                "amount: must be >= 1",
                "email: \"nope\" is not a valid email",
                "kind: must be refund",
                "target: must match one of the allowed forms (form 1: must be an integer, got string; form 2: \"12a\" does not match the pattern ^\\d{3}$)",
            ]
        );
    }
}
