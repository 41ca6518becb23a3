//! Tools from an OpenAPI 3.x service: each selected operation becomes a tool named by its
//! `operationId`, described by its summary, taking one JSON Schema built from its path, query
//! and header parameters and its JSON body's fields (`$ref`s resolved), and called over HTTP
//! with memex's `reqwest` client.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::config::{expand_env, resolve_path, OpenApiSourceConfig, DEFAULT_TIMEOUT_MS};
use super::error::SourceError;
use super::result::{clip, result_object, shown_url};
use crate::tools::{Tool, ToolContext, ToolError, ToolOrigin};

/// Largest OpenAPI document read (8 MiB).
const MAX_SPEC_BYTES: u64 = 8 * 1024 * 1024;
/// Largest response body read from an operation (1 MiB).
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Deepest `$ref` chain inlined; deeper (or cyclic) references become `{}` (any value).
const MAX_REF_DEPTH: usize = 24;
/// Longest wait for the document.
const SPEC_TIMEOUT: Duration = Duration::from_secs(15);

/// The `format` values JSON Schema asserts; an OpenAPI-only one (`binary`, `byte`,
/// `password`, …) is dropped rather than refused.
const KNOWN_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
    "int8",
    "int16",
    "int32",
    "int64",
    "int",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "uint",
    "float",
    "double",
];

/// Keywords of OpenAPI's schema object that are not JSON Schema.
const OPENAPI_ONLY: &[&str] = &[
    "example",
    "discriminator",
    "xml",
    "externalDocs",
    "nullable",
];

/// Where a parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Location {
    Path,
    Query,
    Header,
    /// A field of the JSON body.
    Body,
    /// The whole JSON body (a body that is not an object), under the property `body`.
    WholeBody,
}

/// Reads the document (URL or file), parses it and returns the selected operations as tools.
pub async fn open(
    cfg: &OpenApiSourceConfig,
    base: &Path,
) -> Result<Vec<Arc<dyn Tool>>, SourceError> {
    let config_err = |message: String| SourceError::Config {
        source_name: cfg.name.clone(),
        message,
    };
    let unreachable = |message: String| SourceError::Unreachable {
        source_name: cfg.name.clone(),
        kind: "OpenAPI service",
        message,
    };
    let mut headers = Vec::new();
    for (k, v) in &cfg.headers {
        let value = expand_env(&cfg.name, &format!("headers.{k}"), v)?;
        let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(k.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) else {
            return Err(config_err(format!(
                "header `{k}` is not a valid HTTP header"
            )));
        };
        headers.push((name, value));
    }
    // No redirects: a 3xx would carry the source's headers (and a write's body) elsewhere.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| config_err(format!("cannot build the HTTP client: {e}")))?;
    let text = if cfg.spec.starts_with("http://") || cfg.spec.starts_with("https://") {
        let mut req = client.get(&cfg.spec).timeout(SPEC_TIMEOUT);
        for (k, v) in &headers {
            req = req.header(k.clone(), v.clone());
        }
        let resp = req.send().await.map_err(|e| {
            unreachable(format!(
                "cannot fetch {}: {}",
                shown_url(&cfg.spec),
                error_chain(&e.without_url())
            ))
        })?;
        if !resp.status().is_success() {
            return Err(unreachable(format!(
                "{} answered HTTP {}",
                shown_url(&cfg.spec),
                resp.status()
            )));
        }
        let bytes = read_body(resp, MAX_SPEC_BYTES as usize)
            .await
            .map_err(|e| unreachable(format!("{}: {e}", shown_url(&cfg.spec))))?;
        String::from_utf8(bytes)
            .map_err(|_| unreachable(format!("{} is not UTF-8 text", shown_url(&cfg.spec))))?
    } else {
        let path = resolve_path(base, &cfg.spec);
        let bytes = crate::fsutil::read_capped(&path, MAX_SPEC_BYTES, crate::fsutil::Links::Follow)
            .map_err(|e| config_err(format!("cannot read {}: {e}", path.display())))?;
        String::from_utf8(bytes)
            .map_err(|_| config_err(format!("{} is not UTF-8 text", path.display())))?
    };
    let doc: Value = serde_json::from_str(&text).map_err(|e| {
        unreachable(format!(
            "the document at {} is not JSON ({e}); memex reads OpenAPI 3.x documents in JSON",
            shown_url(&cfg.spec)
        ))
    })?;
    let version = doc.get("openapi").and_then(Value::as_str).unwrap_or("");
    if !version.starts_with("3.") {
        return Err(unreachable(format!(
            "the document at {} is not an OpenAPI 3.x document (no \"openapi\": \"3.…\")",
            shown_url(&cfg.spec)
        )));
    }
    let base_url = match &cfg.base_url {
        Some(u) => u.clone(),
        None => doc
            .pointer("/servers/0/url")
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .map(str::to_string)
            .ok_or_else(|| {
                config_err("set `base_url`: the document names no absolute server URL".into())
            })?,
    };
    if base_url.contains(['?', '#']) {
        return Err(config_err(
            "`base_url` may not have a query or a fragment".into(),
        ));
    }
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err(config_err(format!(
            "`base_url` must start with http:// or https://, found {}",
            crate::tools::quote_for_display(&base_url)
        )));
    }
    let ops = operations(&doc, &cfg.name)?;
    if let Some(wanted) = &cfg.operations {
        for w in wanted {
            if !ops.iter().any(|o| &o.id == w) {
                return Err(config_err(format!(
                    "`operations` names {w}, which is not an operationId of the document"
                )));
            }
        }
    }
    for w in &cfg.irreversible {
        if !ops.iter().any(|o| &o.id == w) {
            return Err(config_err(format!(
                "`irreversible` names {w}, which is not an operationId of the document"
            )));
        }
    }
    let shared = Arc::new(Shared {
        source: cfg.name.clone(),
        base_url: base_url.trim_end_matches('/').to_string(),
        client,
        headers,
        timeout: Duration::from_millis(cfg.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS).max(1)),
    });
    let mut tools: Vec<Arc<dyn Tool>> = Vec::new();
    for op in ops {
        if let Some(wanted) = &cfg.operations {
            if !wanted.contains(&op.id) {
                continue;
            }
        }
        let read_only = op.method == "get" || op.method == "head";
        let irreversible = cfg.irreversible.contains(&op.id);
        let mut parameters = op.schema;
        let mut locations = op.locations;
        // Headers memex sets itself are never the model's: the configured ones, the approval's
        // Idempotency-Key, Authorization.
        let reserved: Vec<String> = cfg
            .headers
            .keys()
            .map(|k| k.to_ascii_lowercase())
            .chain(["idempotency-key".to_string(), "authorization".to_string()])
            .collect();
        let hidden: Vec<String> = locations
            .iter()
            .filter(|(n, l)| **l == Location::Header && reserved.contains(&n.to_ascii_lowercase()))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &hidden {
            locations.remove(name);
            drop_property(&mut parameters, name);
        }
        let mut merchant_arg = None;
        if let Some(arg) = cfg.merchant_arg.as_deref() {
            // A header's name is matched without regard to case, as HTTP does.
            let found = locations
                .iter()
                .find(|(n, l)| {
                    n.as_str() == arg || (**l == Location::Header && n.eq_ignore_ascii_case(arg))
                })
                .map(|(n, _)| n.clone());
            match found {
                Some(name) => {
                    drop_property(&mut parameters, &name);
                    merchant_arg = Some(name);
                }
                None if super::bind::names_property(&parameters, arg) => {
                    return Err(config_err(format!(
                        "operation {} carries {arg} inside another field; memex binds the merchant only as a parameter or a top-level body field, so it cannot keep the model from choosing it",
                        op.id
                    )));
                }
                None => tracing::warn!(
                    target: "memex::sources",
                    source = %cfg.name,
                    "operation {} has no {arg}: it is offered without a merchant binding",
                    op.id
                ),
            }
        }
        tools.push(Arc::new(OpenApiTool {
            shared: Arc::clone(&shared),
            name: op.id,
            description: op.description,
            parameters,
            method: op.method,
            path: op.path,
            locations,
            merchant_arg,
            read_only: read_only && !irreversible,
            irreversible,
        }));
    }
    Ok(tools)
}

/// `e` with its sources, one sentence (reqwest's own message is often just "error sending
/// request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// At most `cap` bytes of a response body.
async fn read_body(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| error_chain(&e.without_url()))?
    {
        if out.len() + chunk.len() > cap {
            return Err(format!("the response is larger than {} KiB", cap / 1024));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// One operation of the document, as a tool would call it.
struct Operation {
    id: String,
    method: String,
    path: String,
    description: String,
    schema: Value,
    locations: BTreeMap<String, Location>,
}

/// Every operation with an `operationId` (others are skipped with a warning).
fn operations(doc: &Value, source: &str) -> Result<Vec<Operation>, SourceError> {
    let err = |message: String| SourceError::Config {
        source_name: source.to_string(),
        message,
    };
    let mut out = Vec::new();
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return Ok(out);
    };
    for (path, item) in paths {
        if !path.starts_with('/') {
            tracing::warn!(target: "memex::sources", source, "the path {path:?} does not start with /; its operations are not offered");
            continue;
        }
        let item = resolve(doc, item, 0);
        let shared_params: Vec<Value> = item
            .get("parameters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            let Some(op) = item.get(method) else { continue };
            let Some(id) = op.get("operationId").and_then(Value::as_str) else {
                tracing::warn!(target: "memex::sources", source, "{} {path} has no operationId; it is not offered as a tool", method.to_uppercase());
                continue;
            };
            let mut properties = Map::new();
            let mut required: Vec<Value> = Vec::new();
            let mut locations = BTreeMap::new();
            // Operation-level parameters override path-level ones of the same name and place.
            let mut params: Vec<Value> = Vec::new();
            let own: Vec<Value> = op
                .get("parameters")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|p| resolve(doc, p, 0)).collect())
                .unwrap_or_default();
            for p in shared_params.iter().map(|p| resolve(doc, p, 0)) {
                let same = |q: &Value| q.get("name") == p.get("name") && q.get("in") == p.get("in");
                if !own.iter().any(same) {
                    params.push(p);
                }
            }
            params.extend(own);
            for p in params {
                let (Some(name), Some(place)) = (
                    p.get("name").and_then(Value::as_str),
                    p.get("in").and_then(Value::as_str),
                ) else {
                    continue;
                };
                let loc = match place {
                    "path" => Location::Path,
                    "query" => Location::Query,
                    "header" => Location::Header,
                    _ => continue, // cookies are not offered
                };
                if locations.insert(name.to_string(), loc).is_some() {
                    return Err(err(format!(
                        "operation {id}: two parameters are called {name}; memex gives the model one schema per operation"
                    )));
                }
                let mut schema = p
                    .get("schema")
                    .map(|s| inline(doc, s))
                    .unwrap_or_else(|| json!({"type": "string"}));
                if let (Some(d), Some(obj)) = (p.get("description"), schema.as_object_mut()) {
                    obj.entry("description").or_insert(d.clone());
                }
                properties.insert(name.to_string(), schema);
                if loc == Location::Path || p.get("required") == Some(&Value::Bool(true)) {
                    required.push(Value::String(name.to_string()));
                }
            }
            if let Some(body) = op.get("requestBody") {
                let body = resolve(doc, body, 0);
                let content = body.get("content").and_then(Value::as_object);
                let schema = content.and_then(|c| {
                    c.iter()
                        .find(|(mime, _)| {
                            mime.starts_with("application/json") || mime.ends_with("+json")
                        })
                        .and_then(|(_, m)| m.get("schema"))
                });
                let body_required = body.get("required") == Some(&Value::Bool(true));
                if let Some(schema) = schema {
                    let schema = merge_all_of(inline(doc, schema));
                    let fields = schema.get("properties").and_then(Value::as_object);
                    match fields {
                        Some(fields)
                            if schema
                                .get("type")
                                .and_then(Value::as_str)
                                .unwrap_or("object")
                                == "object" =>
                        {
                            let body_req: Vec<&str> = schema
                                .get("required")
                                .and_then(Value::as_array)
                                .map(|a| a.iter().filter_map(Value::as_str).collect())
                                .unwrap_or_default();
                            for (name, s) in fields {
                                if locations.insert(name.clone(), Location::Body).is_some() {
                                    return Err(err(format!(
                                        "operation {id}: the body field {name} has the name of a parameter; memex flattens body fields beside the parameters, so the names must differ"
                                    )));
                                }
                                properties.insert(name.clone(), s.clone());
                                if body_required && body_req.contains(&name.as_str()) {
                                    required.push(Value::String(name.clone()));
                                }
                            }
                        }
                        _ => {
                            if locations
                                .insert("body".into(), Location::WholeBody)
                                .is_some()
                            {
                                return Err(err(format!(
                                    "operation {id}: a parameter is called body, the name memex gives a body that is not an object"
                                )));
                            }
                            properties.insert("body".into(), schema.clone());
                            if body_required {
                                required.push(Value::String("body".into()));
                            }
                        }
                    }
                }
            }
            let summary = op.get("summary").and_then(Value::as_str).unwrap_or("");
            let long = op.get("description").and_then(Value::as_str).unwrap_or("");
            let description = match (summary.trim(), long.trim()) {
                ("", "") => format!("{} {path}", method.to_uppercase()),
                (s, "") => s.to_string(),
                ("", d) => clip(d, 1000),
                (s, d) => format!("{s}. {}", clip(d, 1000)),
            };
            let mut schema = json!({"type": "object", "properties": properties});
            if !required.is_empty() {
                schema["required"] = Value::Array(required);
            }
            out.push(Operation {
                id: id.to_string(),
                method: method.to_string(),
                path: path.clone(),
                description,
                schema,
                locations,
            });
        }
    }
    Ok(out)
}

/// `v` itself, or what its `$ref` points to (followed up to the depth limit).
fn resolve(doc: &Value, v: &Value, depth: usize) -> Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) if depth < MAX_REF_DEPTH => {
            match r.strip_prefix('#').and_then(|p| doc.pointer(p)) {
                Some(target) => resolve(doc, target, depth + 1),
                None => json!({}),
            }
        }
        Some(_) => json!({}),
        None => v.clone(),
    }
}

/// Most schema nodes one parameter schema may inline (a spec whose references fan out would
/// otherwise grow exponentially); past it, the rest is `{}` (any value).
const MAX_INLINE_NODES: usize = 4_000;

/// A schema with every `$ref` inlined and OpenAPI-only keywords turned into JSON Schema
/// (`nullable: true` adds `"null"` to the type; unknown `format`s are dropped). A reference
/// already being expanded (a cycle) becomes `{}`, and so does everything past
/// [`MAX_INLINE_NODES`].
fn inline(doc: &Value, schema: &Value) -> Value {
    let mut budget = MAX_INLINE_NODES;
    inline_in(doc, schema, &mut Vec::new(), &mut budget)
}

fn inline_in(doc: &Value, schema: &Value, stack: &mut Vec<String>, budget: &mut usize) -> Value {
    if *budget == 0 || stack.len() > MAX_REF_DEPTH {
        return json!({});
    }
    *budget -= 1;
    match schema {
        Value::Object(obj) => {
            if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
                if stack.iter().any(|s| s == r) {
                    return json!({});
                }
                let target = r.strip_prefix('#').and_then(|p| doc.pointer(p));
                return match target {
                    Some(t) => {
                        stack.push(r.to_string());
                        let v = inline_in(doc, t, stack, budget);
                        stack.pop();
                        v
                    }
                    None => json!({}),
                };
            }
            let mut out = Map::new();
            for (k, v) in obj {
                if OPENAPI_ONLY.contains(&k.as_str()) {
                    continue;
                }
                if k == "format" && !v.as_str().is_some_and(|f| KNOWN_FORMATS.contains(&f)) {
                    continue;
                }
                let v = match k.as_str() {
                    "properties" | "patternProperties" | "$defs" | "definitions" => match v {
                        Value::Object(m) => Value::Object(
                            m.iter()
                                .map(|(n, s)| (n.clone(), inline_in(doc, s, stack, budget)))
                                .collect(),
                        ),
                        other => other.clone(),
                    },
                    "items"
                    | "additionalProperties"
                    | "not"
                    | "contains"
                    | "if"
                    | "then"
                    | "else"
                    | "propertyNames" => inline_in(doc, v, stack, budget),
                    "allOf" | "anyOf" | "oneOf" | "prefixItems" => match v {
                        Value::Array(a) => Value::Array(
                            a.iter().map(|s| inline_in(doc, s, stack, budget)).collect(),
                        ),
                        other => other.clone(),
                    },
                    _ => v.clone(),
                };
                out.insert(k.clone(), v);
            }
            if obj.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(t)) = out.get("type").cloned() {
                    out.insert("type".into(), json!([t, "null"]));
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// A body schema written as `allOf` of object schemas, merged into one object schema (the
/// usual way generators compose a request body), so its fields can be flattened.
fn merge_all_of(schema: Value) -> Value {
    let Some(parts) = schema.get("allOf").and_then(Value::as_array) else {
        return schema;
    };
    if schema.get("properties").is_some() {
        return schema;
    }
    let mut props = Map::new();
    let mut required = Vec::new();
    for part in parts {
        let Some(p) = part.get("properties").and_then(Value::as_object) else {
            return schema;
        };
        props.extend(p.clone());
        if let Some(r) = part.get("required").and_then(Value::as_array) {
            required.extend(r.iter().cloned());
        }
    }
    json!({"type": "object", "properties": props, "required": required})
}

/// `schema` without the property `name` (and without it in `required`).
fn drop_property(schema: &mut Value, name: &str) {
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.remove(name);
    }
    if let Some(Value::Array(req)) = schema.get_mut("required") {
        req.retain(|r| r.as_str() != Some(name));
    }
}

/// What every operation of one service shares.
struct Shared {
    source: String,
    base_url: String,
    client: reqwest::Client,
    headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    timeout: Duration,
}

/// One operation as a tool.
struct OpenApiTool {
    shared: Arc<Shared>,
    name: String,
    description: String,
    parameters: Value,
    method: String,
    path: String,
    locations: BTreeMap<String, Location>,
    merchant_arg: Option<String>,
    read_only: bool,
    irreversible: bool,
}

/// `s` percent-encoded for one path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A parameter value as the text of a path segment, query value or header.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl OpenApiTool {
    fn failed(&self, why: impl std::fmt::Display) -> ToolError {
        let message = format!(
            "the OpenAPI service \"{}\" failed on {}: {why}",
            self.shared.source, self.name
        );
        if self.read_only {
            ToolError::Transient(message)
        } else {
            ToolError::Unavailable(format!("{message}; the call was not retried"))
        }
    }
}

#[async_trait]
impl Tool for OpenApiTool {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn parameters(&self) -> &Value {
        &self.parameters
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn irreversible(&self) -> bool {
        self.irreversible
    }
    fn origin(&self) -> ToolOrigin {
        ToolOrigin {
            kind: "openapi",
            source: self.shared.source.clone(),
        }
    }
    fn merchant_arg(&self) -> Option<&str> {
        self.merchant_arg.as_deref()
    }

    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, ToolError> {
        if self.irreversible && ctx.idempotency_key.is_none() {
            return Err(ToolError::Refused(format!(
                "{} is irreversible and runs only as an approved action",
                self.name
            )));
        }
        let mut args = match args {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            _ => {
                return Err(ToolError::InvalidArgs(
                    "the arguments must be an object".into(),
                ))
            }
        };
        super::bind::fill_merchant(&mut args, self.merchant_arg.as_deref(), &ctx.merchant);
        let mut path = self.path.clone();
        let mut query: Vec<(String, String)> = Vec::new();
        let mut headers = Vec::new();
        let mut body = Map::new();
        let mut whole_body = None;
        for (name, value) in args {
            match self.locations.get(&name) {
                Some(Location::Path) => {
                    let text = as_text(&value);
                    if text.is_empty() || text == "." || text == ".." {
                        return Err(ToolError::InvalidArgs(format!(
                            "{name} must be a non-empty value other than . and .."
                        )));
                    }
                    path = path.replace(&format!("{{{name}}}"), &encode_segment(&text));
                }
                Some(Location::Query) => match value {
                    Value::Array(items) => {
                        query.extend(items.iter().map(|v| (name.clone(), as_text(v))))
                    }
                    Value::Null => {}
                    v => query.push((name, as_text(&v))),
                },
                Some(Location::Header) => headers.push((name, as_text(&value))),
                Some(Location::Body) => {
                    body.insert(name, value);
                }
                Some(Location::WholeBody) => whole_body = Some(value),
                None => {
                    return Err(ToolError::InvalidArgs(format!(
                        "{name} is not a parameter of {}",
                        self.name
                    )))
                }
            }
        }
        let url = format!("{}{path}", self.shared.base_url);
        let method = reqwest::Method::from_bytes(self.method.to_uppercase().as_bytes())
            .map_err(|e| ToolError::Internal(e.to_string()))?;
        let mut req = self
            .shared
            .client
            .request(method, &url)
            .timeout(self.shared.timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        // memex's own headers last, replacing any the model's parameters set.
        let mut own = reqwest::header::HeaderMap::new();
        for (k, v) in &self.shared.headers {
            own.insert(k.clone(), v.clone());
        }
        if let Some(key) = &ctx.idempotency_key {
            if !self.read_only {
                if let Ok(v) = reqwest::header::HeaderValue::from_str(key) {
                    own.insert("idempotency-key", v);
                }
            }
        }
        req = req.headers(own);
        if !query.is_empty() {
            req = req.query(&query);
        }
        if let Some(b) = whole_body {
            req = req.json(&b);
        } else if !body.is_empty() || self.locations.values().any(|l| *l == Location::Body) {
            req = req.json(&Value::Object(body));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Err(self.failed(format!(
                    "no answer within {:.1} s",
                    self.shared.timeout.as_secs_f64()
                )))
            }
            Err(e) => return Err(self.failed(clip(&error_chain(&e.without_url()), 300))),
        };
        let status = resp.status();
        let bytes = read_body(resp, MAX_BODY_BYTES)
            .await
            .map_err(|e| self.failed(e))?;
        let text = String::from_utf8_lossy(&bytes);
        if status.is_redirection() {
            return Err(self.failed(format!(
                "HTTP {status}: memex does not follow redirects (set base_url to where the service is)"
            )));
        }
        if status.is_server_error() {
            return Err(self.failed(format!("HTTP {status}: {}", clip(text.trim(), 500))));
        }
        if status.is_client_error() {
            let message = format!("{}: HTTP {status}: {}", self.name, clip(text.trim(), 1000));
            return Err(if status == reqwest::StatusCode::NOT_FOUND {
                ToolError::NotFound(message)
            } else {
                ToolError::Refused(message)
            });
        }
        if text.trim().is_empty() {
            return Ok(json!({"status": status.as_u16()}));
        }
        let value: Value = serde_json::from_str(text.trim()).map_err(|_| {
            ToolError::Unavailable(format!(
                "the OpenAPI service \"{}\" answered {} with something that is not JSON: {}",
                self.shared.source,
                self.name,
                clip(text.trim(), 200)
            ))
        })?;
        result_object(value).map_err(|why| self.failed(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_flatten_parameters_and_resolve_refs() {
        let doc = json!({
            "openapi": "3.1.0",
            "paths": {
                "/orders/{order_id}/refund": {
                    "post": {
                        "operationId": "refund_order",
                        "summary": "Refund an order",
                        "parameters": [{"name": "order_id", "in": "path", "required": true, "schema": {"type": "string"}}],
                        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Refund"}}}}
                    }
                },
                "/x": {"get": {"summary": "no id"}}
            },
            "components": {"schemas": {"Refund": {"type": "object", "properties": {
                "amount": {"type": "integer", "format": "int32"},
                "note": {"type": "string", "nullable": true, "format": "password", "example": "x"}
            }, "required": ["amount"]}}}
        });
        let ops = operations(&doc, "shop").unwrap();
        assert_eq!(ops.len(), 1);
        let op = &ops[0];
        assert_eq!(op.id, "refund_order");
        assert_eq!(op.locations["amount"], Location::Body);
        assert_eq!(op.locations["order_id"], Location::Path);
        assert_eq!(op.schema["required"], json!(["order_id", "amount"]));
        assert_eq!(
            op.schema["properties"]["note"]["type"],
            json!(["string", "null"])
        );
        assert!(op.schema["properties"]["note"].get("format").is_none());
        crate::tools::Schema::compile(&op.schema).unwrap();
    }

    #[test]
    fn a_body_field_named_like_a_parameter_is_refused() {
        let doc = json!({"openapi": "3.0.3", "paths": {"/o/{id}": {"post": {
            "operationId": "op",
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {"id": {"type": "string"}}}}}}
        }}}});
        let err = operations(&doc, "shop").err().unwrap().to_string();
        assert!(err.contains("op") && err.contains("id"), "{err}");
    }

    #[test]
    fn cyclic_refs_end() {
        let doc = json!({"components": {"schemas": {"N": {"type": "object", "properties": {"next": {"$ref": "#/components/schemas/N"}}}}}});
        let s = inline(&doc, &json!({"$ref": "#/components/schemas/N"}));
        assert!(s.to_string().len() < 100_000);
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn references_that_fan_out_stay_bounded() {
        let doc = json!({"components": {"schemas": {"N": {"type": "object", "properties": {
            "a": {"$ref": "#/components/schemas/N"},
            "b": {"$ref": "#/components/schemas/N"},
            "c": {"type": "array", "items": {"$ref": "#/components/schemas/N"}},
            "d": {"$ref": "#/components/schemas/M"}
        }}, "M": {"type": "object", "properties": {"n": {"$ref": "#/components/schemas/N"}, "m": {"$ref": "#/components/schemas/N"}}}}}});
        let s = inline(&doc, &json!({"$ref": "#/components/schemas/N"}));
        assert!(s.to_string().len() < 200_000, "{}", s.to_string().len());
    }

    fn spec_file(doc: &Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spec.json"), doc.to_string()).unwrap();
        dir
    }

    fn source(merchant_arg: &str) -> OpenApiSourceConfig {
        OpenApiSourceConfig {
            name: "svc".into(),
            spec: "spec.json".into(),
            base_url: Some("http://127.0.0.1:9".into()),
            operations: None,
            merchant_arg: Some(merchant_arg.into()),
            irreversible: vec![],
            headers: Default::default(),
            timeout_ms: None,
        }
    }

    #[tokio::test]
    async fn a_header_merchant_is_bound_without_regard_to_case_and_memex_headers_are_hidden() {
        let doc = json!({"openapi": "3.0.0", "paths": {"/orders/{id}": {"post": {
            "operationId": "op",
            "parameters": [
                {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "X-Merchant-Id", "in": "header", "required": true, "schema": {"type": "string"}},
                {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}
            ]
        }}}});
        let dir = spec_file(&doc);
        let tools = open(&source("x-merchant-id"), dir.path()).await.unwrap();
        let t = &tools[0];
        assert_eq!(t.merchant_arg(), Some("X-Merchant-Id"));
        let props = t.parameters()["properties"].as_object().unwrap();
        assert_eq!(props.keys().collect::<Vec<_>>(), vec!["id"], "{props:?}");
        assert_eq!(t.parameters()["required"], json!(["id"]));
    }

    #[tokio::test]
    async fn a_merchant_only_found_nested_is_refused() {
        let doc = json!({"openapi": "3.1.0", "paths": {"/orders": {"post": {
            "operationId": "create",
            "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                "order": {"type": "object", "properties": {"merchant_id": {"type": "string"}}}
            }}}}}
        }}}});
        let dir = spec_file(&doc);
        let err = open(&source("merchant_id"), dir.path())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("create") && err.contains("inside another field"),
            "{err}"
        );
    }
}
