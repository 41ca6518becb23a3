//! The OpenAPI 3 document of every route, built from [`ROUTES`] (the table the tests check
//! against the router, so a route cannot be added without being documented).

use serde_json::{json, Map, Value};

/// One documented operation.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    /// HTTP method, lower case.
    pub method: &'static str,
    /// Path template (`{param}`).
    pub path: &'static str,
    /// One-line summary.
    pub summary: &'static str,
    /// Whether an admin key is required.
    pub admin: bool,
    /// Whether a bearer key is required at all.
    pub auth: bool,
    /// Request body schema (JSON Schema), if any.
    pub body: Option<&'static str>,
}

const fn r(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    admin: bool,
    body: Option<&'static str>,
) -> RouteDoc {
    RouteDoc {
        method,
        path,
        summary,
        admin,
        auth: true,
        body,
    }
}

/// Every route the server answers.
pub const ROUTES: &[RouteDoc] = &[
    RouteDoc {
        method: "get",
        path: "/healthz",
        summary: "Liveness: the process is up (no key needed)",
        admin: false,
        auth: false,
        body: None,
    },
    r(
        "get",
        "/readyz",
        "Readiness: model loaded, stores reachable (503 with Retry-After and the unready parts when not; an admin key also sees the worker and the stores)",
        false,
        None,
    ),
    r(
        "get",
        "/metrics",
        "Prometheus metrics (text exposition format)",
        true,
        None,
    ),
    r("get", "/openapi.json", "This document", false, None),
    r(
        "post",
        "/v1/embeddings",
        "OpenAI-compatible embeddings (float or base64 little-endian f32)",
        false,
        Some(
            r#"{"type":"object","required":["input"],"properties":{"model":{"type":"string"},"input":{"oneOf":[{"type":"string"},{"type":"array","items":{"type":"string"}}]},"encoding_format":{"type":"string","enum":["float","base64"]},"dimensions":{"type":"integer"},"user":{"type":"string"}}}"#,
        ),
    ),
    r(
        "post",
        "/v1/search",
        "Search the knowledge base (as `memex search --json`)",
        false,
        Some(
            r#"{"type":"object","required":["query"],"properties":{"query":{"type":"string"},"k":{"type":"integer","minimum":1,"maximum":10000},"mode":{"type":"string","enum":["hybrid","vector","keyword"]}}}"#,
        ),
    ),
    r(
        "post",
        "/v1/documents",
        "Ingest documents into the knowledge base (as `memex ingest --json`)",
        true,
        Some(
            r#"{"type":"object","required":["documents"],"properties":{"documents":{"type":"array","items":{"type":"object","required":["id","text"],"properties":{"id":{"type":"string","maxLength":512,"description":"a relative path such as guides/refunds.md: no '..', '.'-prefixed or empty segment, no leading '/', no control character"},"text":{"type":"string"},"format":{"type":"string","enum":["md","txt","html"]},"metadata":{"type":"object"}}}}}}"#,
        ),
    ),
    r(
        "post",
        "/v1/merchants/{mid}/episodes",
        "Add an episode (as `memex episodes add --json`)",
        false,
        Some(
            r#"{"type":"object","required":["summary"],"properties":{"summary":{"type":"string"},"metadata":{"type":"object"},"occurred_at":{"type":"string"}}}"#,
        ),
    ),
    r(
        "get",
        "/v1/merchants/{mid}/episodes",
        "List recent episodes (`?limit=`, as `memex episodes list --json`)",
        false,
        None,
    ),
    r(
        "delete",
        "/v1/merchants/{mid}/episodes",
        "Forget every episode of the merchant (as `memex episodes forget --json`)",
        false,
        None,
    ),
    r(
        "post",
        "/v1/merchants/{mid}/episodes/import",
        "Import episodes (lines as `memex episodes import`; answers {\"imported\": new episodes, \"already_present\": lines stored before}): JSONL body (application/x-ndjson or application/jsonl), or a JSON array (application/json); a bad line is a 400 naming it, lines before it kept",
        false,
        Some(
            r#"{"type":"array","items":{"type":"object","required":["summary"],"properties":{"summary":{"type":"string"},"metadata":{"type":"object"},"occurred_at":{"type":"string"}}}}"#,
        ),
    ),
    r(
        "post",
        "/v1/merchants/{mid}/episodes/search",
        "Search episodes (as `memex episodes search --json`)",
        false,
        Some(
            r#"{"type":"object","required":["query"],"properties":{"query":{"type":"string"},"k":{"type":"integer","minimum":1,"maximum":1000}}}"#,
        ),
    ),
    r(
        "post",
        "/v1/merchants/{mid}/ask",
        "One agent turn (as `memex ask --json`); SSE with Accept: text/event-stream",
        false,
        Some(
            r#"{"type":"object","required":["message"],"properties":{"message":{"type":"string"},"session":{"type":"string"}}}"#,
        ),
    ),
    r(
        "get",
        "/v1/sessions/{sid}/audit",
        "A session's audit log (as `memex audit --json`)",
        false,
        None,
    ),
    r(
        "get",
        "/v1/actions",
        "Actions by status (`?status=pending`)",
        true,
        None,
    ),
    r(
        "post",
        "/v1/actions/{id}/approve",
        "Approve an action (as `memex approve --json`)",
        true,
        None,
    ),
    r(
        "post",
        "/v1/actions/{id}/reject",
        "Reject an action (as `memex reject --json`)",
        true,
        None,
    ),
    r(
        "post",
        "/v1/merchants/{mid}/plans",
        "Plan (and unless dry_run, execute) a task (as `memex plan --json`)",
        false,
        Some(
            r#"{"type":"object","required":["task"],"properties":{"task":{"type":"string"},"dry_run":{"type":"boolean"}}}"#,
        ),
    ),
    r(
        "get",
        "/v1/plans/{id}",
        "A plan (as `memex plan show --json`)",
        false,
        None,
    ),
    r(
        "post",
        "/v1/plans/{id}/resume",
        "Resume a plan (as `memex plan resume --json`)",
        false,
        None,
    ),
];

fn params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

/// The OpenAPI 3.0 document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for route in ROUTES {
        let mut op = json!({
            "summary": route.summary,
            "operationId": format!("{}_{}", route.method, route.path.replace(['/', '{', '}', '.'], "_")),
            "parameters": params(route.path),
            "responses": {
                "200": {"description": "Success", "content": {"application/json": {}}},
                "default": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        if route.auth {
            op["security"] = json!([{"bearer": []}]);
        } else {
            op["security"] = json!([]);
        }
        if route.admin {
            op["description"] = json!("Requires an admin key.");
        }
        if let Some(schema) = route.body {
            let schema: Value = serde_json::from_str(schema).unwrap_or(Value::Null);
            op["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": schema}}});
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[route.method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "memex", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Local-first memory and retrieval for AI agents, over HTTP."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}},
        },
        "security": [{"bearer": []}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_once_with_valid_bodies() {
        let doc = document();
        let mut n = 0;
        for r in ROUTES {
            assert!(
                doc["paths"][r.path][r.method].is_object(),
                "{} {}",
                r.method,
                r.path
            );
            if let Some(b) = r.body {
                assert!(serde_json::from_str::<Value>(b).is_ok(), "{}", r.path);
            }
            n += 1;
        }
        assert_eq!(n, 20);
    }
}
