//! [`Pattern`]: the `pattern` keyword of tool schemas on its own, for code that checks ids
//! against the same expressions the schemas use (the demo seed data, for instance).
//!
//! It is compiled by the same `jsonschema` validator as a schema's `pattern`, over the `regex`
//! crate with ECMA-262 meanings (`\d` is `[0-9]`, `\w` is `[A-Za-z0-9_]`), so an id pattern
//! means the same thing wherever memex applies it. The `regex` engine runs in linear time, so
//! hostile text cannot cause a backtracking blow-up; patterns it cannot run (look-around,
//! back-references) are refused by [`Pattern::compile`].

use std::sync::Arc;

use serde_json::{json, Value};

use super::schema::{build_validator, SchemaError};

/// A compiled ECMA-262 pattern. As in JSON Schema, an unanchored pattern matches anywhere in
/// the string.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    validator: Arc<jsonschema::Validator>,
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Pattern").field(&self.source).finish()
    }
}

impl Pattern {
    /// Compiles `source`, or says in one sentence why it cannot be enforced.
    pub fn compile(source: &str) -> Result<Pattern, SchemaError> {
        let validator = build_validator(&json!({"type": "string", "pattern": source}))
            .map_err(|e| SchemaError(format!("the pattern {source} is not supported: {e}")))?;
        Ok(Pattern {
            source: source.to_owned(),
            validator: Arc::new(validator),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern matches `text` (anywhere, unless anchored).
    pub fn is_match(&self, text: &str) -> bool {
        self.validator.is_valid(&Value::String(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Pattern::compile(p).unwrap().is_match(s)
    }

    #[test]
    fn anchored_and_unanchored_patterns() {
        let id = "^pay_[A-Za-z0-9]{6,32}$";
        assert!(m(id, "pay_ABC123"));
        assert!(!m(id, "pay_ABC12"));
        assert!(!m(id, "xpay_ABC123"));
        assert!(!m(id, "pay_ABC123' OR 1=1 --"));
        assert!(m("b+", "aabbb"));
        assert!(!m("^b+", "aabbb"));
        assert!(m("a|b", "xbx"));
    }

    #[test]
    fn digits_and_word_characters_are_ascii_as_in_ecma() {
        assert!(m(r"^\d+$", "0123456789"));
        // Arabic-Indic and full-width digits are not `\d` in ECMA-262.
        assert!(!m(r"^\d+$", "\u{661}\u{662}"));
        assert!(!m(r"^\d+$", "１２"));
        assert!(m(r"^[\d-]+$", "12-34"));
        assert!(!m(r"^\w+$", "café"));
        assert!(m(r"^\D+$", "abc"));
    }

    #[test]
    fn unsupported_syntax_is_refused() {
        for p in ["(?=a)b", r"(a)\1", "[a-"] {
            assert!(Pattern::compile(p).is_err(), "{p}");
        }
    }

    #[test]
    fn hostile_input_is_matched_without_blow_up() {
        let text = "a".repeat(100_000);
        assert!(!m("^(a+)+$b", &text));
        assert!(m("^(a|aa)+$", &text));
    }
}
