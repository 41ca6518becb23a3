//! Health, metrics, OpenAPI, `/v1/embeddings`, `/v1/search`, `/v1/documents` and episodes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use chrono::SecondsFormat;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Principal;
use super::error::{ApiError, ApiPath, ApiQuery, JsonBody};
use super::state::SharedState;
use crate::embed::Embedder;
use crate::episodic::{self, Episode, EpisodeDraft, SearchQuery};
use crate::kb::{IngestOptions, SearchHit, SearchMode};

/// The authenticated routes of this file.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/search", post(search))
        .route("/v1/documents", post(documents))
        .route(
            "/v1/merchants/{mid}/episodes",
            post(add_episode).get(list_episodes).delete(forget_episodes),
        )
        .route("/v1/merchants/{mid}/episodes/search", post(search_episodes))
        .route("/v1/merchants/{mid}/episodes/import", post(import_episodes))
}

/// `GET /healthz`: the process is up (no key needed).
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the model answers and the stores are reachable (200 `ready`, else 503
/// `not_ready` with `Retry-After`).
///
/// Every key learns ready or not and which parts are not (`unready`: `model`,
/// `knowledge_base`, `episodic`, `state`); only an admin key sees the worker, the store URLs
/// (redacted) and the knowledge-base generation.
async fn readyz(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
) -> Response {
    let model = state.queue.embed_async(vec!["ready".into()]).await.is_ok();
    let kb = {
        let kb = Arc::clone(&state.kb);
        matches!(
            tokio::task::spawn_blocking(move || kb.stats()).await,
            Ok(Ok(_))
        )
    };
    let episodes = match crate::merchant::MerchantId::parse("readyz") {
        Ok(m) => state.episodes.count(&m).await.is_ok(),
        Err(_) => false,
    };
    let (stores_ok, stores) = super::ops::stores(
        &state.worker,
        state.episodes.describe(),
        &state.kb,
        episodes,
        kb,
    )
    .await;
    let unready: Vec<&str> = [
        ("model", model),
        ("knowledge_base", kb),
        ("episodic", episodes),
        ("state", stores_ok),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(name, _)| name)
    .collect();
    let ready = unready.is_empty();
    if !ready {
        tracing::warn!(target: "memex::serve", unready = ?unready, "not ready");
    }
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "unready": unready,
    });
    if principal.is_admin() {
        body["checks"] = json!({"model": model, "knowledge_base": kb, "episodes": episodes});
        body["worker"] = json!(state.worker.id);
        body["stores"] = stores;
    }
    if ready {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        let mut resp = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from(super::error::UNAVAILABLE_RETRY_SECS),
        );
        resp
    }
}

/// `GET /metrics`: Prometheus text, for admin keys only (the series describe every merchant's
/// traffic on this worker).
async fn metrics(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    state.metrics.queue_depth.set(state.queue.depth() as i64);
    if let Some(agent) = &state.agent {
        if let Some(tokens) = agent.llm_tokens().await {
            state.metrics.llm_tokens.set(tokens);
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response())
}

/// `GET /openapi.json`.
async fn openapi() -> Json<Value> {
    Json(super::openapi::document())
}

/// `input` of `/v1/embeddings`: a string or an array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    One(String),
    /// Several texts.
    Many(Vec<String>),
}

/// Body of `POST /v1/embeddings` (OpenAI's shape).
#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    /// Model name (any; memex has one model).
    #[serde(default)]
    pub model: Option<String>,
    /// The text(s).
    pub input: EmbeddingInput,
    /// `float` (default) or `base64` (little-endian f32).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Must be 384 when given.
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// Ignored.
    #[serde(default)]
    pub user: Option<String>,
}

/// Most texts in one `/v1/embeddings` request (OpenAI's limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

async fn embeddings(
    State(state): State<SharedState>,
    JsonBody(req): JsonBody<EmbeddingsRequest>,
) -> Result<Json<Value>, ApiError> {
    let texts = match req.input {
        EmbeddingInput::One(s) => vec![s],
        EmbeddingInput::Many(v) => v,
    };
    if texts.is_empty() {
        return Err(ApiError::bad_request("input is empty"));
    }
    if texts.len() > MAX_EMBEDDING_INPUTS {
        return Err(ApiError::bad_request(format!(
            "input has {} texts; at most {MAX_EMBEDDING_INPUTS} per request",
            texts.len()
        )));
    }
    if texts.iter().any(|t| t.is_empty()) {
        return Err(ApiError::bad_request("input contains an empty string"));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding_format must be \"float\" or \"base64\", not {:?}",
                other.chars().take(40).collect::<String>()
            )))
        }
    };
    let dim = state.queue.embedder().dim();
    if let Some(d) = req.dimensions {
        if d != dim {
            return Err(ApiError::bad_request(format!(
                "dimensions must be {dim} for this model"
            )));
        }
    }
    let counter = state.queue.embedder();
    let mut tokens = 0usize;
    for t in &texts {
        tokens += counter
            .count_tokens(t)
            .map_err(|e| ApiError::internal(&e))?;
    }
    let vectors = state.queue.embed_async(texts).await?;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": req.model.unwrap_or_else(|| state.options.model_name.clone()),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

/// Body of `POST /v1/search`.
#[derive(Debug, Deserialize)]
pub struct SearchRequest {
    /// The query.
    pub query: String,
    /// Number of results (1 to 10000, default 10).
    #[serde(default)]
    pub k: Option<usize>,
    /// `hybrid` (default), `vector` or `keyword`.
    #[serde(default)]
    pub mode: Option<String>,
}

/// A search hit as `memex search --json` prints it, its source shown relative to the root it
/// was ingested from (never a server path: see [`crate::kb::text::client_source`]).
fn hit_json(h: &SearchHit, roots: &[PathBuf]) -> Value {
    json!({
        "chunk_id": h.chunk_id,
        "source": crate::kb::text::client_source(&h.source, roots),
        "heading": h.heading,
        "text": h.text,
        "score": h.score,
        "vector_rank": h.vector_rank,
        "keyword_rank": h.keyword_rank,
        "line_start": h.line_start,
        "line_end": h.line_end,
    })
}

/// The roots search sources are shown relative to: the folder of documents posted to this
/// server, and the knowledge base's own `documents/` (the same folder, unless `--kb-url`).
fn source_roots(state: &SharedState) -> Vec<PathBuf> {
    vec![
        state.data_dir.join("documents"),
        state.kb.dir().join("documents"),
    ]
}

fn bounded_k(k: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match k.unwrap_or(default) {
        k if (1..=max).contains(&k) => Ok(k),
        _ => Err(ApiError::bad_request(format!(
            "k must be a whole number from 1 to {max}"
        ))),
    }
}

async fn search(
    State(state): State<SharedState>,
    JsonBody(req): JsonBody<SearchRequest>,
) -> Result<Json<Value>, ApiError> {
    if req.query.trim().is_empty() {
        return Err(ApiError::bad_request("the query is empty"));
    }
    let k = bounded_k(req.k, 10, crate::kb::MAX_K)?;
    let mode = match req.mode.as_deref() {
        None | Some("hybrid") => SearchMode::Hybrid,
        Some("vector") => SearchMode::Vector,
        Some("keyword") => SearchMode::Keyword,
        Some(_) => {
            return Err(ApiError::bad_request(
                "mode must be \"hybrid\", \"vector\" or \"keyword\"",
            ))
        }
    };
    let vector = match mode {
        SearchMode::Keyword => Vec::new(),
        _ => state
            .queue
            .embed_async(vec![req.query.clone()])
            .await?
            .pop()
            .ok_or_else(|| ApiError::bad_request("the query produced no vector"))?,
    };
    let kb = Arc::clone(&state.kb);
    let hits =
        tokio::task::spawn_blocking(move || kb.search_with_vector(&req.query, &vector, k, mode))
            .await
            .map_err(|e| ApiError::internal(&e))??;
    let roots = source_roots(&state);
    let results: Vec<Value> = hits.iter().map(|h| hit_json(h, &roots)).collect();
    Ok(Json(json!({ "results": results })))
}

/// One document of `POST /v1/documents`.
#[derive(Debug, Deserialize)]
pub struct DocumentIn {
    /// Stable id (letters, digits, `.`, `_`, `-`; at most 128): re-posting an id replaces it.
    pub id: String,
    /// The text.
    pub text: String,
    /// `md`, `txt` (default) or `html`.
    #[serde(default)]
    pub format: Option<String>,
    /// A JSON object kept with the chunks (only for plain-text documents).
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// Body of `POST /v1/documents`.
#[derive(Debug, Deserialize)]
pub struct DocumentsRequest {
    /// The documents.
    pub documents: Vec<DocumentIn>,
}

/// Longest document id, in bytes.
pub const MAX_DOC_ID: usize = 512;

/// Why `id` cannot name a document, if it cannot: an id is a relative path of 1 to
/// [`MAX_DOC_ID`] bytes (`guides/refunds.md`, as `memex ingest` names a file under its root)
/// with no empty, `.` or `..` segment, no leading `/` or `\\`, no control character, no
/// backslash and no segment starting with `.` (hidden files are skipped by the ingest walk).
pub fn doc_id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() || id.len() > MAX_DOC_ID {
        return Some("must be 1 to 512 bytes");
    }
    if id.chars().any(char::is_control) {
        return Some("must not contain control characters");
    }
    if id.starts_with('/') || id.contains('\\') {
        return Some("must be a relative path with '/' separators");
    }
    for segment in id.split('/') {
        match segment {
            "" => return Some("must not contain an empty segment ('//' or a trailing '/')"),
            "." | ".." => return Some("must not contain a '.' or '..' segment"),
            s if s.starts_with('.') => return Some("must not contain a segment starting with '.'"),
            _ => {}
        }
    }
    None
}

/// The file of document `id` in format `ext` under the documents folder: `ID.EXT`, or `ID`
/// itself when it already ends in `.EXT` (so `guides/refunds.md` is shown as posted).
fn doc_file(dir: &Path, id: &str, ext: &str) -> PathBuf {
    if id.ends_with(&format!(".{ext}")) {
        dir.join(id)
    } else {
        dir.join(format!("{id}.{ext}"))
    }
}

const DOC_EXTS: [&str; 4] = ["md", "txt", "html", "jsonl"];

/// Writes `bytes` to `path` unless it already holds exactly them (the one atomic write).
fn write_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    crate::fsutil::write_atomic(path, bytes)
}

async fn documents(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    JsonBody(req): JsonBody<DocumentsRequest>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    if req.documents.is_empty() {
        return Err(ApiError::bad_request("documents is empty"));
    }
    // (the file, its bytes, the files of the same id in the other formats)
    let mut files: Vec<(PathBuf, Vec<u8>, Vec<PathBuf>)> = Vec::new();
    let dir = state.data_dir.join("documents");
    for d in &req.documents {
        if let Some(problem) = doc_id_problem(&d.id) {
            return Err(ApiError::bad_request(format!(
                "document id {:?} {problem}",
                crate::kb::text::escape_controls(&d.id.chars().take(60).collect::<String>())
            )));
        }
        if d.text.trim().is_empty() {
            return Err(ApiError::bad_request(format!(
                "document {} has no text",
                d.id
            )));
        }
        let metadata = match &d.metadata {
            None | Some(Value::Null) => None,
            Some(m @ Value::Object(_)) => Some(m.clone()),
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "document {}: metadata must be a JSON object",
                    d.id
                )))
            }
        };
        let (ext, bytes) = match (d.format.as_deref(), metadata) {
            (None | Some("txt"), Some(m)) => {
                let line = json!({"id": d.id, "text": d.text, "metadata": m});
                ("jsonl", format!("{line}\n").into_bytes())
            }
            (Some(f @ ("md" | "html")), Some(_)) => {
                return Err(ApiError::bad_request(format!(
                    "document {}: metadata is kept only for txt documents, not {f}",
                    d.id
                )))
            }
            (None | Some("txt"), None) => ("txt", d.text.clone().into_bytes()),
            (Some("md"), None) => ("md", d.text.clone().into_bytes()),
            (Some("html"), None) => ("html", d.text.clone().into_bytes()),
            (Some(_), _) => {
                return Err(ApiError::bad_request(format!(
                    "document {}: format must be \"md\", \"txt\" or \"html\"",
                    d.id
                )))
            }
        };
        let others = DOC_EXTS.iter().map(|e| doc_file(&dir, &d.id, e)).collect();
        files.push((doc_file(&dir, &d.id, ext), bytes, others));
    }
    let _one_at_a_time = state.ingest_lock.lock().await;
    let kb = Arc::clone(&state.kb);
    let follower = state.worker.kb.clone();
    let report = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        std::fs::create_dir_all(&dir).map_err(|e| ApiError::internal(&e))?;
        let mut paths = Vec::with_capacity(files.len());
        for (path, bytes, others) in &files {
            // A document re-posted in another format replaces its earlier file.
            for other in others {
                if other != path && other.exists() {
                    std::fs::remove_file(other).map_err(|e| ApiError::internal(&e))?;
                }
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| ApiError::internal(&e))?;
            }
            write_if_changed(path, bytes).map_err(|e| ApiError::internal(&e))?;
            paths.push(path.clone());
        }
        match follower {
            // `--kb-url`: the next generation is published, then served here at once.
            Some(f) => f
                .ingest(&paths, &IngestOptions::default())
                .map(|(report, _generation)| report)
                .map_err(|e| match e {
                    crate::kb::publish::PublishError::Kb(k) => ApiError::from(k),
                    other => ApiError::internal(&other),
                }),
            None => Ok(kb.ingest(&paths, &IngestOptions::default())?),
        }
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    Ok(Json(
        serde_json::to_value(&report).map_err(|e| ApiError::internal(&e))?,
    ))
}

fn rfc3339(e: &Episode) -> String {
    e.created_at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// An episode as `memex episodes … --json` prints it (no embedding).
pub fn episode_json(e: &Episode) -> Value {
    json!({
        "id": e.id.to_string(),
        "merchant_id": e.merchant_id.as_str(),
        "summary": e.summary,
        "metadata": e.metadata,
        "created_at": rfc3339(e),
        "occurred_at": e.occurred_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
    })
}

/// Body of `POST /v1/merchants/{mid}/episodes`.
#[derive(Debug, Deserialize)]
pub struct EpisodeIn {
    /// What happened.
    pub summary: String,
    /// A JSON object.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// RFC 3339 or `YYYY-MM-DD`.
    #[serde(default)]
    pub occurred_at: Option<String>,
}

async fn add_episode(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(mid): ApiPath<String>,
    JsonBody(req): JsonBody<EpisodeIn>,
) -> Result<Json<Value>, ApiError> {
    let merchant = principal.merchant(&mid)?;
    if req.summary.trim().is_empty() {
        return Err(ApiError::bad_request("summary is empty"));
    }
    let metadata = match req.metadata {
        None | Some(Value::Null) => json!({}),
        Some(m @ Value::Object(_)) => m,
        Some(_) => return Err(ApiError::bad_request("metadata must be a JSON object")),
    };
    let occurred_at = req
        .occurred_at
        .as_deref()
        .map(episodic::parse_occurred_at)
        .transpose()
        .map_err(|_| ApiError::bad_request("occurred_at must be RFC 3339 or YYYY-MM-DD"))?;
    let vector = state
        .queue
        .embed_async(vec![req.summary.clone()])
        .await?
        .pop()
        .ok_or_else(|| ApiError::bad_request("the summary produced no vector"))?;
    let mut draft = EpisodeDraft::new(req.summary)
        .with_metadata(metadata)
        .with_embedding(vector);
    draft.occurred_at = occurred_at;
    let episode = state.episodes.save(&merchant, draft).await?;
    Ok(Json(episode_json(&episode)))
}

/// Query of `GET /v1/merchants/{mid}/episodes`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Most episodes (1 to 10000, default 20); parsed here so a bad value is a JSON 400.
    pub limit: Option<String>,
}

async fn list_episodes(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(mid): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let merchant = principal.merchant(&mid)?;
    let bad = || ApiError::bad_request("limit must be a whole number from 1 to 10000");
    let limit = match q.limit.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => Some(raw.parse::<usize>().map_err(|_| bad())?),
    };
    let limit = bounded_k(limit, 20, 10_000).map_err(|_| bad())?;
    let episodes = state.episodes.recent(&merchant, limit).await?;
    Ok(Json(Value::Array(
        episodes.iter().map(episode_json).collect(),
    )))
}

/// Body of `POST /v1/merchants/{mid}/episodes/search`.
#[derive(Debug, Deserialize)]
pub struct EpisodeSearch {
    /// What to look for.
    pub query: String,
    /// Number of episodes (1 to 1000, default 5).
    #[serde(default)]
    pub k: Option<usize>,
}

async fn search_episodes(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(mid): ApiPath<String>,
    JsonBody(req): JsonBody<EpisodeSearch>,
) -> Result<Json<Value>, ApiError> {
    let merchant = principal.merchant(&mid)?;
    if req.query.trim().is_empty() {
        return Err(ApiError::bad_request("the search query is empty"));
    }
    let k = bounded_k(req.k, 5, 1_000)?;
    // Speaker names leave the text that is embedded (the keyword leg and the speaker hint
    // place the person; `episodic::dense_query_text`).
    let speakers = state.episodes.speakers(&merchant).await?;
    let vector = state
        .queue
        .embed_async(vec![crate::episodic::dense_query_text(
            &req.query, &speakers,
        )])
        .await?
        .pop();
    let hits = state
        .episodes
        .search(&merchant, &SearchQuery::new(req.query, vector, k))
        .await?;
    let arr: Vec<Value> = hits
        .iter()
        .map(|h| {
            let mut v = episode_json(&h.episode);
            v["score"] = json!(h.score);
            v
        })
        .collect();
    Ok(Json(Value::Array(arr)))
}

async fn forget_episodes(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(mid): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let merchant = principal.merchant(&mid)?;
    let n = state.episodes.forget(&merchant).await?;
    Ok(Json(
        json!({"merchant_id": merchant.as_str(), "forgotten": n}),
    ))
}

/// The server's embedding queue as the import's embedding seam.
struct QueueEmbed(crate::embed::queue::EmbedQueue);

#[async_trait::async_trait]
impl episodic::import::BatchEmbed for QueueEmbed {
    async fn embed_batch(
        &self,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.embed_async(texts).await?)
    }
}

/// `POST /v1/merchants/{mid}/episodes/import`: the lines of `memex episodes import`, as JSONL
/// (`application/x-ndjson`, `application/jsonl`) or as one JSON array (`application/json`),
/// through the same library import (same keys, so a re-post stores nothing twice). Answers
/// `{"imported": NEW, "already_present": SEEN}` (episodes stored now, and lines an earlier
/// import had stored); a bad line is a 400 naming it, every line before it stored.
async fn import_episodes(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(mid): ApiPath<String>,
    headers: axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    use episodic::import::{self, ImportError};
    let merchant = principal.merchant(&mid)?;
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than the server accepts",
            )
        } else {
            ApiError::bad_request(r.body_text())
        }
    })?;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let (lines, unit): (Vec<std::io::Result<String>>, &str) = match media.as_deref() {
        Some("application/x-ndjson" | "application/jsonl" | "application/json-lines") => (
            import::bounded_lines(std::io::Cursor::new(body), import::MAX_LINE_BYTES).collect(),
            "line",
        ),
        Some("application/json") => {
            let items: Vec<Value> = serde_json::from_slice(&body).map_err(|e| {
                ApiError::bad_request(format!("the body must be a JSON array of episodes ({e})"))
            })?;
            let lines = items
                .iter()
                .map(|v| serde_json::to_string(v).map_err(std::io::Error::other))
                .collect();
            (lines, "item")
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send application/x-ndjson or application/jsonl (one episode per line), or \
                 application/json (an array of episodes)",
            ))
        }
    };
    let embedder = QueueEmbed(state.queue.clone());
    let outcome =
        import::import_lines_counted(&*state.episodes, &embedder, &merchant, lines, &mut |_| {})
            .await;
    let failure = match outcome {
        Ok(n) => {
            return Ok(Json(json!({
                "imported": n.new,
                "already_present": n.lines - n.new,
            })))
        }
        Err(f) => f,
    };
    let before = failure.imported;
    let new = failure.new;
    let kept = |before: u64| {
        format!(
            "imported {new} new episode(s) before it ({} already present)",
            before - new
        )
    };
    Err(match failure.error {
        ImportError::Line { line, reason } => {
            ApiError::bad_request(format!("{unit} {line} {reason}; {}", kept(before)))
        }
        ImportError::Read { line, source } => ApiError::bad_request(format!(
            "cannot read {unit} {line} ({source}); {}",
            kept(before)
        )),
        ImportError::Store(e) => ApiError::from(e),
        ImportError::Embed(e) => match e.downcast::<crate::embed::queue::QueueError>() {
            Ok(q) => ApiError::from(*q),
            Err(other) => ApiError::internal(&*other),
        },
    })
}
