//! The tool registry over the real payments tools: the OpenAI `tools` list, and validation of
//! raw model arguments (unknown tool, unparseable JSON, each kind of schema violation) before
//! any call.

use crate::support::payments as payments_support;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use memex::domain::payments::payments_registry;
use memex::tools::{
    canonical_json, ArgError, RegistryError, Tool, ToolContext, ToolError, ToolRegistry,
};
use payments_support::{KeywordKb, SeededDb};
use serde_json::{json, Value};

fn registry() -> (ToolRegistry, SeededDb) {
    let fixture = SeededDb::new();
    let registry = payments_registry(fixture.db.clone(), KeywordKb::load()).unwrap();
    (registry, fixture)
}

fn violations(reg: &ToolRegistry, tool: &str, raw: &str) -> Vec<String> {
    match reg.validate(tool, raw) {
        Err(ArgError::Schema { violations, .. }) => violations,
        other => panic!("{tool} {raw}: expected schema violations, got {other:?}"),
    }
}

#[test]
fn openai_tools_lists_the_five_tools_with_object_schemas() {
    let (reg, _f) = registry();
    let tools = reg.openai_tools();
    let list = tools.as_array().unwrap();
    let names: Vec<&str> = list
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "get_transaction",
            "get_merchant_account",
            "search_knowledge_base",
            "create_support_ticket",
            "initiate_refund"
        ]
    );
    for t in list {
        assert_eq!(t["type"], "function");
        let f = &t["function"];
        assert_eq!(f["parameters"]["type"], "object", "{f}");
        assert_eq!(f["parameters"]["additionalProperties"], false, "{f}");
        assert!(f["description"].as_str().unwrap().len() > 80, "{f}");
        assert_eq!(f.as_object().unwrap().len(), 3, "{f}");
    }
    let refund = &list[4]["function"];
    assert_eq!(
        refund["parameters"]["required"],
        json!(["transaction_id", "amount", "reason"])
    );
    assert!(refund["description"]
        .as_str()
        .unwrap()
        .contains("IRREVERSIBLE"));
    let ticket = &list[3]["function"]["parameters"]["properties"];
    assert_eq!(
        ticket["priority"]["enum"],
        json!(["low", "medium", "high", "urgent"])
    );
    assert_eq!(
        ticket["type"]["enum"],
        json!([
            "dispute",
            "settlement",
            "refund",
            "technical",
            "account",
            "other"
        ])
    );
    // The list is valid JSON that round-trips (what goes into the request body).
    let text = serde_json::to_string(&tools).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), tools);
}

#[test]
fn flags_mark_reads_writes_and_the_irreversible_refund() {
    let (reg, _f) = registry();
    let flags = |n: &str| {
        let t = reg.get(n).unwrap();
        (t.read_only(), t.irreversible())
    };
    assert_eq!(flags("get_transaction"), (true, false));
    assert_eq!(flags("get_merchant_account"), (true, false));
    assert_eq!(flags("search_knowledge_base"), (true, false));
    assert_eq!(flags("create_support_ticket"), (false, false));
    assert_eq!(flags("initiate_refund"), (false, true));
    assert!(reg.get("refund_everything").is_none());
    assert_eq!(reg.len(), 5);
}

#[test]
fn valid_arguments_come_back_as_json() {
    let (reg, _f) = registry();
    assert_eq!(
        reg.validate("get_transaction", r#"{"transaction_id": "pay_ABC123"}"#)
            .unwrap(),
        json!({"transaction_id": "pay_ABC123"})
    );
    // No-argument tool: `{}`, an empty string and whitespace are all accepted.
    for raw in ["{}", "", "  \n"] {
        assert_eq!(
            reg.validate("get_merchant_account", raw).unwrap(),
            json!({})
        );
    }
    // A whole float where an integer is required is normalised.
    let args = reg
        .validate(
            "initiate_refund",
            r#"{"transaction_id":"pay_ABC123","amount":1000.0,"reason":"damaged item"}"#,
        )
        .unwrap();
    assert!(args["amount"].is_i64(), "{args}");
    assert_eq!(args["amount"], 1000);
}

#[test]
fn unknown_tool_is_reported_with_the_available_tools() {
    let (reg, _f) = registry();
    let err = reg.validate("refund_everything", "{}").unwrap_err();
    assert_eq!(err.kind(), "unknown_tool");
    let j = err.to_json();
    assert_eq!(j["error"], "unknown_tool");
    assert_eq!(j["available_tools"].as_array().unwrap().len(), 5);
    assert!(j["message"]
        .as_str()
        .unwrap()
        .contains("unknown tool \"refund_everything\""));
    // A hostile name is quoted, escaped and cut.
    let hostile = format!("\u{1b}[2J{}", "x".repeat(10_000));
    let msg = reg.validate(&hostile, "{}").unwrap_err().to_string();
    assert!(!msg.contains('\u{1b}'));
    assert!(msg.len() < 400, "{}", msg.len());
}

#[test]
fn unparseable_json_is_reported_not_panicked() {
    let (reg, _f) = registry();
    for raw in [
        r#"{"transaction_id": "pay_ABC123""#,
        "{transaction_id: pay_ABC123}",
        "pay_ABC123",
        r#"{"transaction_id": "pay_ABC123"} trailing"#,
    ] {
        let err = reg.validate("get_transaction", raw).unwrap_err();
        assert!(
            matches!(err, ArgError::InvalidJson { .. }),
            "{raw}: {err:?}"
        );
        assert_eq!(err.to_json()["error"], "invalid_json");
        assert!(err.to_string().contains("get_transaction"), "{err}");
    }
}

#[test]
fn schema_violations_are_precise() {
    let (reg, _f) = registry();
    assert_eq!(
        violations(&reg, "get_transaction", "{}"),
        ["missing required property \"transaction_id\""]
    );
    assert_eq!(
        violations(&reg, "get_transaction", r#"{"transaction_id": 123456}"#),
        ["transaction_id: must be a string, got integer"]
    );
    assert_eq!(
        violations(&reg, "get_transaction", r#"{"transaction_id": "ABC123"}"#),
        ["transaction_id: \"ABC123\" does not match the pattern ^pay_[A-Za-z0-9]{6,32}$"]
    );
    assert_eq!(
        violations(
            &reg,
            "get_transaction",
            r#"{"transaction_id": "pay_ABC123' OR 1=1 --"}"#
        )
        .len(),
        1
    );
    assert_eq!(
        violations(
            &reg,
            "get_transaction",
            r#"{"transaction_id": "pay_ABC123", "foo": 1}"#
        ),
        ["unexpected property \"foo\""]
    );
    assert_eq!(
        violations(&reg, "get_merchant_account", r#"{"account": "MID002"}"#),
        ["unexpected property \"account\""]
    );
    assert_eq!(
        violations(
            &reg,
            "initiate_refund",
            r#"{"transaction_id": "pay_ABC123", "amount": 0, "reason": "dup"}"#
        ),
        ["amount: must be >= 1"]
    );
    assert_eq!(
        violations(
            &reg,
            "initiate_refund",
            r#"{"transaction_id": "pay_ABC123", "amount": "4999", "reason": "dup"}"#
        ),
        ["amount: must be an integer, got string"]
    );
    assert_eq!(
        violations(
            &reg,
            "initiate_refund",
            r#"{"transaction_id": "pay_ABC123", "amount": 49.99, "reason": "dup"}"#
        ),
        ["amount: must be an integer, got number"]
    );
    assert_eq!(
        violations(
            &reg,
            "search_knowledge_base",
            r#"{"query": "refunds", "k": 50}"#
        ),
        ["k: must be <= 10"]
    );
    let ticket = violations(
        &reg,
        "create_support_ticket",
        r#"{"subject": "Help", "description": "Settlement missing for a week", "priority": "critical", "type": "billing"}"#,
    );
    assert_eq!(
        ticket.iter().collect::<HashSet<_>>(),
        [
            "subject: must be at least 5 characters long".to_owned(),
            "priority: must be one of low, medium, high, urgent".to_owned(),
            "type: must be one of dispute, settlement, refund, technical, account, other"
                .to_owned(),
        ]
        .iter()
        .collect::<HashSet<_>>()
    );
    let err = reg
        .validate("get_transaction", r#"["pay_ABC123"]"#)
        .unwrap_err();
    assert_eq!(err.kind(), "invalid_args");
    assert_eq!(
        err.to_json()["violations"],
        json!(["must be an object, got array"])
    );
}

#[test]
fn oversized_arguments_are_rejected_unparsed() {
    let (reg, _f) = registry();
    let raw = format!(r#"{{"query": "{}"}}"#, "a".repeat(100_000));
    let v = violations(&reg, "search_knowledge_base", &raw);
    assert!(v[0].contains("the limit is 65536"), "{v:?}");
}

#[test]
fn canonical_arguments_ignore_key_order_for_loop_detection() {
    let (reg, _f) = registry();
    let a = reg
        .validate(
            "initiate_refund",
            r#"{"transaction_id":"pay_ABC123","amount":100,"reason":"damaged"}"#,
        )
        .unwrap();
    let b = reg
        .validate(
            "initiate_refund",
            r#"{ "reason": "damaged", "amount": 100.0, "transaction_id": "pay_ABC123" }"#,
        )
        .unwrap();
    assert_eq!(canonical_json(&a), canonical_json(&b));
    assert_eq!(
        canonical_json(&a),
        r#"{"amount":100,"reason":"damaged","transaction_id":"pay_ABC123"}"#
    );
}

struct Custom {
    name: String,
    params: Value,
}

#[async_trait]
impl Tool for Custom {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        "test tool"
    }
    fn parameters(&self) -> &Value {
        &self.params
    }
    fn read_only(&self) -> bool {
        true
    }
    async fn call(&self, args: Value, _ctx: &ToolContext) -> Result<Value, ToolError> {
        Ok(args)
    }
}

fn custom(name: &str, params: Value) -> Arc<dyn Tool> {
    Arc::new(Custom {
        name: name.into(),
        params,
    })
}

#[test]
fn registration_rejects_duplicates_bad_names_and_unsupported_schemas() {
    let mut reg = ToolRegistry::new();
    assert!(reg.is_empty());
    let ok = json!({"type": "object", "properties": {"x": {"type": "integer"}}});
    reg.register(custom("echo", ok.clone())).unwrap();
    assert_eq!(
        reg.register(custom("echo", ok.clone())),
        Err(RegistryError::Duplicate("echo".into()))
    );
    for bad in ["", "has space", "semi;colon", &"x".repeat(65)] {
        assert!(
            matches!(
                reg.register(custom(bad, ok.clone())),
                Err(RegistryError::InvalidName(_))
            ),
            "{bad:?}"
        );
    }
    for (schema, needle) in [
        (json!({"type": "string"}), "top level"),
        (
            json!({"type": "object", "properties": {"x": {"type": "string", "format": "no-such-format"}}}),
            "no-such-format",
        ),
        (
            json!({"type": "object", "properties": {"x": {"anyOf": []}}}),
            "anyOf",
        ),
        (
            json!({"type": "object", "properties": {"x": {"type": "string", "pattern": "(?=a)b"}}}),
            "pattern",
        ),
        (
            json!({"type": "object", "properties": {"x": {"type": "string", "requried": true}}}),
            "unknown keyword \"requried\"",
        ),
        (
            json!({"type": "object", "properties": {"x": {"$ref": "https://example.com/x.json"}}}),
            "only local references",
        ),
    ] {
        match reg.register(custom("other", schema.clone())) {
            Err(RegistryError::InvalidSchema { message, .. }) => {
                assert!(message.contains(needle), "{schema}: {message}")
            }
            other => panic!("{schema}: {other:?}"),
        }
    }
    assert_eq!(reg.names(), ["echo"]);
    // Without additionalProperties: false, extra properties are allowed.
    assert_eq!(
        reg.validate("echo", r#"{"x": 1, "y": 2}"#).unwrap(),
        json!({"x": 1, "y": 2})
    );
}

/// A tool's arguments as a Rust type: its schema comes from `schemars`, with `$defs`/`$ref`,
/// `anyOf`, `format` and `const`.
#[allow(dead_code)]
#[derive(schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
struct RefundArgs {
    /// The transaction to refund.
    #[schemars(regex(pattern = r"^pay_\d{6}$"))]
    transaction_id: String,
    /// Amount in paise.
    #[schemars(range(min = 1, max = 10_000_000))]
    amount: u64,
    /// Where to send the receipt.
    #[schemars(email)]
    receipt_email: String,
    /// Always "refund".
    #[schemars(extend("const" = "refund"))]
    action: String,
    /// Who asked for it, if anyone.
    requested_by: Option<Requester>,
}

#[allow(dead_code)]
#[derive(schemars::JsonSchema)]
struct Requester {
    /// The requester's name.
    #[schemars(length(min = 2))]
    name: String,
    /// How they asked.
    channel: Channel,
}

#[allow(dead_code)]
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Channel {
    Email,
    Phone,
}

#[test]
fn a_schemars_schema_registers_and_validates() {
    let schema = serde_json::to_value(schemars::schema_for!(RefundArgs)).unwrap();
    let text = schema.to_string();
    for keyword in ["$schema", "$defs", "$ref", "anyOf", "format", "const"] {
        assert!(
            text.contains(&format!("\"{keyword}\"")),
            "{keyword}: {schema}"
        );
    }
    let mut reg = ToolRegistry::new();
    reg.register(custom("refund", schema.clone()))
        .unwrap_or_else(|e| panic!("{e}: {schema}"));

    let ok = reg
        .validate(
            "refund",
            r#"{"transaction_id": "pay_123456", "amount": 4999.0, "receipt_email": "ops@shop.in",
                "action": "refund", "requested_by": {"name": "Asha", "channel": "phone"}}"#,
        )
        .unwrap();
    assert!(ok["amount"].is_u64(), "{ok}");
    assert_eq!(ok["amount"], 4999);
    reg.validate(
        "refund",
        r#"{"transaction_id": "pay_123456", "amount": 1, "receipt_email": "a@b.co",
            "action": "refund", "requested_by": null}"#,
    )
    .unwrap();

    let mut v = violations(
        &reg,
        "refund",
        r#"{"transaction_id": "pay_１２３４５６", "amount": 0, "receipt_email": "not-an-email",
            "action": "payout", "requested_by": {"name": "A", "channel": "fax"}, "extra": 1}"#,
    );
    v.sort();
    assert_eq!(v.len(), 6, "{v:?}");
    assert_eq!(v[0], "action: must be refund");
    assert_eq!(v[1], "amount: must be >= 1");
    assert_eq!(v[2], "receipt_email: \"not-an-email\" is not a valid email");
    assert!(
        v[3].starts_with("requested_by: must match one of the allowed forms (form 1: "),
        "{v:?}"
    );
    // ECMA `\d` is ASCII: full-width digits do not match.
    assert_eq!(
        v[4],
        "transaction_id: \"pay_１２３４５６\" does not match the pattern ^pay_\\d{6}$"
    );
    assert_eq!(v[5], "unexpected property \"extra\"");
}
