//! The one error shape of every route: `{"error": {"code", "message"}}` with an HTTP status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Seconds of `Retry-After` while a store is unreachable.
pub const UNAVAILABLE_RETRY_SECS: u64 = 2;

/// Which store `err` (or an error in its source chain) says is unreachable, if any: `state`
/// (the Redis state store: keys, agent sessions, actions), `episodic`, or `redis` for a
/// bare Redis connection failure.
pub fn unreachable_store(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(crate::redisdb::RedisDbError::Unreachable { store, .. }) =
            e.downcast_ref::<crate::redisdb::RedisDbError>()
        {
            return Some(if *store == "episodes" {
                "episodic"
            } else {
                "state"
            });
        }
        if let Some(crate::episodic::EpisodicError::Unavailable { .. }) =
            e.downcast_ref::<crate::episodic::EpisodicError>()
        {
            return Some("episodic");
        }
        if let Some(r) = e.downcast_ref::<redis::RedisError>() {
            if r.is_io_error()
                || r.is_connection_refusal()
                || r.is_connection_dropped()
                || r.is_timeout()
            {
                return Some("redis");
            }
        }
        next = e.source();
    }
    None
}

/// An error answered to an HTTP client. Messages never contain a key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`unauthorized`, `not_found`, `queue_full`, …).
    pub code: &'static str,
    /// One sentence for people.
    pub message: String,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with no `Retry-After`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 500 `internal`: the message is logged, the client gets a generic sentence.
    ///
    /// When the cause is a store the server cannot reach (Redis down, refused, timed out), the
    /// answer is instead 503 `unavailable` with `Retry-After` ([`UNAVAILABLE_RETRY_SECS`]):
    /// the request may succeed once the store is back, and the next request reconnects. The
    /// log names the store (`HOST:PORT/DB`, never a password); the client is told which kind of
    /// store only.
    pub fn internal(err: &(dyn std::error::Error + 'static)) -> Self {
        if let Some(store) = unreachable_store(err) {
            tracing::warn!(target: "memex::serve", store, error = %err, "a store is unreachable");
            return Self::unavailable(
                "unavailable",
                format!("the {store} store is unreachable; retry shortly"),
                UNAVAILABLE_RETRY_SECS,
            );
        }
        tracing::error!(target: "memex::serve", error = %err, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle the request; see its log",
        )
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// Adds a `Retry-After` of `secs`.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<crate::embed::queue::QueueError> for ApiError {
    fn from(e: crate::embed::queue::QueueError) -> Self {
        use crate::embed::queue::QueueError;
        match e {
            QueueError::Full(_) => ApiError::unavailable("queue_full", e.to_string(), 1),
            QueueError::Stopped => ApiError::unavailable("unavailable", e.to_string(), 5),
            QueueError::Embed(inner) => ApiError::internal(&inner),
        }
    }
}

impl From<crate::kb::KbError> for ApiError {
    fn from(e: crate::kb::KbError) -> Self {
        if crate::embed::EmbedError::is_overloaded_in(&e) {
            return ApiError::unavailable(
                "queue_full",
                "the embedding queue is full; retry shortly",
                1,
            );
        }
        ApiError::internal(&e)
    }
}

impl From<crate::episodic::EpisodicError> for ApiError {
    fn from(e: crate::episodic::EpisodicError) -> Self {
        use crate::episodic::EpisodicError as E;
        match &e {
            E::InvalidInput(m) => ApiError::bad_request(m.clone()),
            E::Locked { .. } | E::Unavailable { .. } => ApiError::unavailable(
                "unavailable",
                "the episodic store is busy; retry shortly",
                1,
            ),
            _ => ApiError::internal(&e),
        }
    }
}

impl From<crate::serve::keys::KeyError> for ApiError {
    fn from(e: crate::serve::keys::KeyError) -> Self {
        use crate::redisdb::RedisDbError;
        if let crate::serve::keys::KeyError::Redis(inner @ RedisDbError::Unreachable { .. }) = &e {
            tracing::warn!(target: "memex::serve", store = "state", error = %inner, "the key store is unreachable");
            return ApiError::unavailable(
                "unavailable",
                "the key store (state) is unreachable; retry shortly",
                UNAVAILABLE_RETRY_SECS,
            );
        }
        ApiError::internal(&e)
    }
}

/// The JSON body of a request; a malformed or oversized body is an [`ApiError`] (400, 413, 415).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => {
                let status = rejection.status();
                let code = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    _ => "bad_request",
                };
                let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "the request body is larger than the server accepts".to_string()
                } else {
                    rejection.body_text()
                };
                Err(ApiError::new(status, code, message))
            }
        }
    }
}

/// A path parameter of a route; a value that does not parse (bad percent-encoding, not
/// UTF-8, wrong type) is a JSON 400 like every other error, never axum's plain-text answer.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "bad path parameter: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// The query string of a route; one that does not parse is a JSON 400.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "bad query string: {}",
                rejection.body_text()
            ))),
        }
    }
}
