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
            read_body,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            rate_limit,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
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

/// Reads the whole request body (up to `--body-limit`) within `--body-timeout` before the
/// handler runs: a body that stalls is 408 `request_timeout`, one past the limit 413, one the
/// client breaks off 400. Runs after auth and the rate limit, so only a caller with a valid key
/// can make the server wait for a body at all.
async fn read_body(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    use http_body_util::BodyExt;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.options.body_limit as u64) {
        // Answered at once: nothing of a body that cannot be accepted is waited for.
        return closing(too_large());
    }
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, state.options.body_limit);
    let collected =
        match tokio::time::timeout(state.options.body_read_timeout, limited.collect()).await {
            Ok(Ok(c)) => c.to_bytes(),
            Ok(Err(e)) => {
                let over = e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                return closing(if over {
                    too_large()
                } else {
                    ApiError::bad_request("the request body could not be read to its end")
                });
            }
            Err(_) => {
                return closing(ApiError::new(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the request body did not arrive within {} s",
                        state.options.body_read_timeout.as_secs_f64()
                    ),
                ));
            }
        };
    next.run(Request::from_parts(
        parts,
        axum::body::Body::from(collected),
    ))
    .await
}

/// 413 `payload_too_large`.
fn too_large() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is larger than the server accepts",
    )
}

/// `err` with `Connection: close`: its request's body was not read to the end, so the
/// connection cannot carry another request (a client that reused it would race the close).
fn closing(err: ApiError) -> Response {
    let mut resp = err.into_response();
    resp.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    resp
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
/// Connections are served by hyper (HTTP/1 and HTTP/2) with a header-read timeout
/// (`ServeOptions::header_read_timeout`): a client that does not send a whole request head in
/// time — a slowloris, or a kept-alive connection left idle — is disconnected. Each request
/// carries the peer address as `ConnectInfo<SocketAddr>`.
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
    serve_until(listener, app, &state.options, async move {
        shutdown_signal().await;
        signal_stop.cancel();
    })
    .await;
    if let Some(agent) = &state.agent {
        agent.drain(drain).await;
    }
    Ok(())
}

/// The accept loop of [`run`]: serves until `shutdown` resolves, then lets every open
/// connection finish its in-flight requests and returns.
async fn serve_until(
    listener: tokio::net::TcpListener,
    app: Router,
    options: &ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    // HTTP/2 has no header timeout: pings find a peer that went silent.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let first_byte_wait = options.header_read_timeout;
    // Connections hold a receiver of `signal` (dropped: shut down gracefully) and one of
    // `closed` (all dropped: every connection has ended).
    let (signal_tx, signal_rx) = tokio::sync::watch::channel(());
    let (closed_tx, closed_rx) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, never spin.
                    tracing::warn!(target: "memex::serve", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let router = app.clone();
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo::<SocketAddr>(remote));
            let mut router = router.clone();
            async move {
                tower_service::Service::call(&mut router, req.map(axum::body::Body::new)).await
            }
        });
        let builder = builder.clone();
        let mut signal = signal_rx.clone();
        let closed = closed_rx.clone();
        tokio::spawn(async move {
            // A client that sends nothing at all is dropped after the header timeout (hyper's
            // own timeout starts only once it has read enough to choose the protocol).
            let mut probe = [0u8; 1];
            match tokio::time::timeout(first_byte_wait, tcp.peek(&mut probe)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => {
                    drop(closed);
                    return;
                }
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
            let mut conn = std::pin::pin!(conn);
            let mut draining = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(target: "memex::serve", error = %e, "connection ended");
                        }
                        break;
                    }
                    _ = signal.changed(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(closed);
        });
    }
    drop(listener);
    // Every connection sees its `signal` receiver fail and shuts down gracefully.
    drop(signal_tx);
    drop(signal_rx);
    drop(closed_rx);
    closed_tx.closed().await;
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
        }))
        .layer(middleware::from_fn(merchant_keys_only));
    router.merge(limited)
}

/// The MCP tools act for one merchant: an admin key (no merchant) is 403, said plainly.
async fn merchant_keys_only(req: Request, next: Next) -> Response {
    if req
        .extensions()
        .get::<Principal>()
        .is_some_and(Principal::is_admin)
    {
        return ApiError::forbidden(
            "/mcp needs a merchant key: MCP tools act for one merchant, and an admin key has none",
        )
        .into_response();
    }
    next.run(req).await
}

async fn limit_body(limit: usize, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return closing(too_large());
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::Body::new(http_body_util::Limited::new(body, limit));
    next.run(Request::from_parts(parts, body)).await
}
