//! MCP over streamable HTTP: a tower service for `memex serve` to mount at `/mcp`, and a
//! loopback server around it for `memex mcp --http ADDR`.
//!
//! Every request is first shown to the caller's `merchant_of` (in `memex serve`, the bearer
//! key's check): `None` answers `401` with a JSON-RPC error body and reaches nothing else;
//! `Some(merchant)` is attached to the request ([`McpMerchant`]) and the request goes on to
//! rmcp's [`StreamableHttpService`] (stateful sessions, `Mcp-Session-Id`). A session serves the
//! merchant of its first request only.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use http::{header, Request, StatusCode};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
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
    let inner = StreamableHttpService::new(
        move || Ok(deps.per_request_handler()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    McpHttpService { inner, merchant_of }
}

/// The `401` answer: a JSON-RPC error object (code -32001), never echoing what was sent.
fn unauthorized() -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": -32001, "message": "unauthorized: a valid bearer key is required for /mcp"},
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
        parts.extensions.insert(McpMerchant(merchant));
        let request = Request::from_parts(parts, body);
        let inner = self.inner.clone();
        Box::pin(async move {
            let response = inner.handle(request).await;
            Ok(response.map(Body::new))
        })
    }
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
