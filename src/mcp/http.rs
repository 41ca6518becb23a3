//! MCP over streamable HTTP: a tower service for `memex serve` to mount at `/mcp`, and a
//! loopback server around it for `memex mcp --http ADDR`.
//!
//! Every request is first shown to the caller's `merchant_of` (in `memex serve`, the bearer
//! key's check): `None` answers `401` with a JSON-RPC error body and reaches nothing else;
//! `Some(merchant)` is attached to the request ([`McpMerchant`]) and the request goes on to
//! rmcp's [`StreamableHttpService`] (stateful sessions, `Mcp-Session-Id`).
//!
//! A session belongs to the merchant that opened it (the `initialize` POST that answered with
//! its `Mcp-Session-Id`). Every later operation on it — POST, the GET event stream, DELETE —
//! from another merchant is answered exactly as an unknown session (`404 Not Found: Session
//! not found`), and nothing reaches rmcp, so one merchant can neither end, read nor use
//! another's session.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use http::{header, Request, StatusCode};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};

use super::{McpDeps, McpError, McpMerchant, MemexMcp};
use crate::merchant::MerchantId;

/// Decides the merchant of a request from its head (method, URI, headers), or refuses it.
pub type MerchantOf = Arc<dyn Fn(&http::request::Parts) -> Option<MerchantId> + Send + Sync>;

/// The `/mcp` service: [`streamable_http_service`] builds it. Clone it freely: clones share
/// sessions.
#[derive(Clone)]
pub struct McpHttpService {
    inner: StreamableHttpService<MemexMcp, LocalSessionManager>,
    merchant_of: MerchantOf,
    sessions: Arc<LocalSessionManager>,
    owners: Arc<Mutex<Owners>>,
}

/// The merchant of every live session, by `Mcp-Session-Id`.
#[derive(Default)]
struct Owners {
    by_session: HashMap<String, MerchantId>,
    /// Past this many entries, the next new session first drops those rmcp no longer holds.
    prune_at: usize,
}

/// Entries kept before the first sweep of ended sessions.
const PRUNE_FLOOR: usize = 1024;

/// The header naming a streamable-HTTP session.
const SESSION_HEADER: &str = "mcp-session-id";

/// rmcp's answer for a session it does not hold; a session of another merchant gets the
/// same bytes.
fn session_not_found() -> Response {
    let mut response = Response::new(Body::from("Not Found: Session not found"));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// The streamable-HTTP MCP service over `deps`, with rmcp's default configuration (stateful
/// sessions; `Host` must be a loopback name — see [`streamable_http_service_with`] for a
/// server reached by another name).
pub fn streamable_http_service(deps: Arc<McpDeps>, merchant_of: MerchantOf) -> McpHttpService {
    streamable_http_service_with(deps, merchant_of, StreamableHttpServerConfig::default())
}

/// [`streamable_http_service`] with an explicit rmcp configuration (allowed hosts, keep-alive,
/// a cancellation token for shutdown).
pub fn streamable_http_service_with(
    deps: Arc<McpDeps>,
    merchant_of: MerchantOf,
    config: StreamableHttpServerConfig,
) -> McpHttpService {
    let sessions = Arc::new(LocalSessionManager::default());
    let inner = StreamableHttpService::new(
        move || Ok(deps.per_request_handler()),
        Arc::clone(&sessions),
        config,
    );
    McpHttpService {
        inner,
        merchant_of,
        sessions,
        owners: Arc::new(Mutex::new(Owners {
            by_session: HashMap::new(),
            prune_at: PRUNE_FLOOR,
        })),
    }
}

/// The `401` answer: a JSON-RPC error object (code -32001), never echoing what was sent.
fn unauthorized() -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": -32001, "message": "unauthorized: /mcp needs a merchant key (Authorization: Bearer KEY)"},
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    response
}

impl tower_service::Service<Request<Body>> for McpHttpService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let Some(merchant) = (self.merchant_of)(&parts) else {
            return Box::pin(async { Ok(unauthorized()) });
        };
        let session = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(id) = &session {
            // Only the merchant that opened a session may touch it; to anyone else it does
            // not exist. Every session is recorded when it is opened, so one with no owner here
            // is unknown: 404 for every method (rmcp itself would accept a DELETE of it).
            let owner = match self.owners.lock() {
                Ok(o) => o.by_session.get(id).cloned(),
                Err(poisoned) => poisoned.into_inner().by_session.get(id).cloned(),
            };
            if owner.as_ref() != Some(&merchant) {
                return Box::pin(async { Ok(session_not_found()) });
            }
        }
        let deleting = parts.method == http::Method::DELETE;
        parts.extensions.insert(McpMerchant(merchant.clone()));
        let request = Request::from_parts(parts, body);
        let inner = self.inner.clone();
        let owners = Arc::clone(&self.owners);
        let sessions = Arc::clone(&self.sessions);
        Box::pin(async move {
            let response = inner.handle(request).await;
            match &session {
                Some(id) if deleting && response.status().is_success() => {
                    if let Ok(mut o) = owners.lock() {
                        o.by_session.remove(id);
                    }
                }
                Some(_) => {}
                None => {
                    let opened = response
                        .headers()
                        .get(SESSION_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    if let Some(id) = opened {
                        record_owner(&owners, &sessions, id, merchant).await;
                    }
                }
            }
            Ok(response.map(Body::new))
        })
    }
}

/// Records `merchant` as the owner of the new session `id`; past `prune_at` entries, first
/// forgets the sessions rmcp has ended (closed or expired).
async fn record_owner(
    owners: &Mutex<Owners>,
    sessions: &LocalSessionManager,
    id: String,
    merchant: MerchantId,
) {
    let stale: Option<Vec<String>> = match owners.lock() {
        Ok(o) if o.by_session.len() >= o.prune_at => Some(o.by_session.keys().cloned().collect()),
        _ => None,
    };
    let mut ended = Vec::new();
    for candidate in stale.into_iter().flatten() {
        let key: Arc<str> = candidate.as_str().into();
        if !sessions.has_session(&key).await.unwrap_or(true) {
            ended.push(candidate);
        }
    }
    let mut o = match owners.lock() {
        Ok(o) => o,
        Err(poisoned) => poisoned.into_inner(),
    };
    for e in &ended {
        o.by_session.remove(e);
    }
    if !ended.is_empty() || o.by_session.len() >= o.prune_at {
        o.prune_at = (o.by_session.len() * 2).max(PRUNE_FLOOR);
    }
    o.by_session.insert(id, merchant);
}

/// Serves `/mcp` for one `merchant` on loopback address `addr` (port 0 picks a free port)
/// until `shutdown` completes. `on_listening` gets the bound address once it accepts
/// connections. Any non-loopback address is refused.
pub async fn serve_loopback(
    deps: Arc<McpDeps>,
    merchant: MerchantId,
    addr: SocketAddr,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), McpError> {
    if !addr.ip().is_loopback() {
        return Err(McpError::NotLoopback(addr));
    }
    let io = |source| McpError::Io {
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(io)?;
    let bound = listener.local_addr().map_err(io)?;
    let merchant_of: MerchantOf = Arc::new(move |_| Some(merchant.clone()));
    let config = StreamableHttpServerConfig::default();
    let cancel = config.cancellation_token.clone();
    let service = streamable_http_service_with(deps, merchant_of, config);
    let app = axum::Router::new().route_service("/mcp", service);
    on_listening(bound);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            cancel.cancel();
        })
        .await
        .map_err(io)
}
