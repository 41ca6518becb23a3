//! `memex serve`: the memory subsystem as an authenticated HTTP service (axum on tokio).
//!
//! | file | job |
//! | --- | --- |
//! | `keys.rs` | the hashed API-key table (`keys.db`) |
//! | `auth.rs` | bearer-key middleware, [`auth::Principal`], tenancy checks |
//! | `error.rs` | `{"error": {"code", "message"}}` and the JSON body extractor |
//! | `limits.rs` | per-key token buckets |
//! | `metrics.rs` | Prometheus metrics |
//! | `routes.rs` | health, embeddings, knowledge base, episodes |
//! | `agent_routes.rs` | ask (JSON and SSE), audit, actions, plans: every agent/planner call |
//! | `ops.rs` | the worker's name and the shared stores `/readyz` reports |
//! | `openapi.rs` | the OpenAPI 3 document, generated from the route table |
//!
//! The composition root (which embedder, stores and agent) is the CLI's `src/cli/serve.rs`;
//! this module takes the built parts in [`AppState`].

pub mod agent_routes;
mod agent_service;
pub mod auth;
pub mod error;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod routes;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;

pub use auth::KeyIdCell;
use auth::Principal;
use error::ApiError;
pub use state::{AppState, ServeOptions, SharedState};

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("the server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The whole router: `/healthz` open, everything else behind a bearer key. An extra service
/// (MCP's streamable HTTP) can be nested with [`router_with`].
pub fn router(state: SharedState) -> Router {
    router_with(state, |r| r)
}

/// The router, with `extra` applied to the authenticated part before the auth layer — the
/// place to `nest_service("/mcp", …)` so `/mcp` needs a bearer key like every route.
pub fn router_with(
    state: SharedState,
    extra: impl FnOnce(Router<SharedState>) -> Router<SharedState>,
) -> Router {
    let authed = extra(routes::routes().merge(agent_routes::routes()))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            rate_limit,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.keys),
            auth::require_key,
        ));
    Router::new()
        .route("/healthz", axum::routing::get(routes::healthz))
        .merge(authed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.options.body_limit))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// Per-key rate limit (after auth, so the key id is known).
async fn rate_limit(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    if let Some(p) = req.extensions().get::<Principal>() {
        if let Err(wait) = state.limiter.check(&p.key_id) {
            return ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests for this key; retry later",
            )
            .with_retry_after(wait)
            .into_response();
        }
    }
    next.run(req).await
}

/// Timeout, metrics and one access-log line per request (never the key).
async fn observe(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // The key id is known only after auth; a shared cell carries it back out.
    let key_cell: Arc<std::sync::OnceLock<String>> = Arc::default();
    let mut req = req;
    req.extensions_mut()
        .insert(KeyIdCell(Arc::clone(&key_cell)));
    let resp = match tokio::time::timeout(state.options.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request took longer than the server allows",
        )
        .into_response(),
    };
    let status = resp.status().as_u16();
    let secs = started.elapsed().as_secs_f64();
    state
        .metrics
        .requests
        .with_label_values(&[&method, &route, &status.to_string()])
        .inc();
    state
        .metrics
        .latency
        .with_label_values(&[&method, &route])
        .observe(secs);
    let key_id = key_cell.get().map(String::as_str).unwrap_or("-");
    tracing::info!(
        target: "memex::serve::access",
        method = %method,
        route = %route,
        status,
        latency_ms = secs * 1000.0,
        key_id = %key_id,
        worker = %state.worker.id,
        "request"
    );
    resp
}

/// Serves `app` on `listener` until SIGTERM/SIGINT, then drains in-flight requests and
/// waits (up to `drain`) for running agent turns.
///
/// `stop` is cancelled when the signal arrives, so long-lived streams (the MCP service's SSE
/// sessions) end and let the drain finish.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: Router,
    state: SharedState,
    drain: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), ServeError> {
    let signal_stop = stop.clone();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        signal_stop.cancel();
    })
    .await?;
    if let Some(agent) = &state.agent {
        agent.drain(drain).await;
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!(target: "memex::serve", "shutting down: draining in-flight requests");
}

/// Mounts a raw service (the MCP endpoint) at `path` under the body limit every JSON route has:
/// a declared `Content-Length` over the limit is 413 at once, and a body that streams past it is
/// cut off there, so a peer can never make the server hold more than `--body-limit` bytes.
pub fn mount_limited<S>(
    router: Router<SharedState>,
    path: &str,
    service: S,
    limit: usize,
) -> Router<SharedState>
where
    S: tower_service::Service<Request, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    let limited = Router::new()
        .route_service(path, service)
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            limit_body(limit, req, next)
        }));
    router.merge(limited)
}

async fn limit_body(limit: usize, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than the server accepts",
        )
        .into_response();
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::Body::new(http_body_util::Limited::new(body, limit));
    next.run(Request::from_parts(parts, body)).await
}
