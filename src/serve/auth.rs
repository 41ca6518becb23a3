//! Bearer-key authentication and the tenancy rules every route applies.
//!
//! The middleware puts a [`Principal`] into the request's extensions; handlers (and services
//! nested into the router, such as MCP at `/mcp`) read it from there.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::keys::Role;
use super::state::SharedState;
use crate::merchant::MerchantId;

/// Who is calling: the owner of the request's bearer key.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key's public id (`key_…`), safe to log.
    pub key_id: String,
    /// Merchant or admin.
    pub role: Role,
    /// The merchant a merchant key acts for (`None` for admin keys).
    pub merchant: Option<MerchantId>,
}

impl Principal {
    /// Whether this is an admin key.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// 403 unless admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this route needs an admin key"))
        }
    }

    /// The merchant named by a path, when this principal may act for it. A merchant key naming
    /// another merchant gets exactly the answer of a merchant that does not exist.
    pub fn merchant(&self, raw: &str) -> Result<MerchantId, ApiError> {
        let not_found = || ApiError::not_found("no such merchant");
        let mid = MerchantId::parse(raw).map_err(|_| not_found())?;
        match (&self.role, &self.merchant) {
            (Role::Admin, _) => Ok(mid),
            (Role::Merchant, Some(own)) if *own == mid => Ok(mid),
            _ => Err(not_found()),
        }
    }

    /// Whether this principal may see a resource owned by `owner`.
    pub fn may_see(&self, owner: &str) -> bool {
        self.is_admin() || self.merchant.as_ref().is_some_and(|m| m.as_str() == owner)
    }
}

/// The bearer token of a request, if it carries one.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Whether the request is for the MCP endpoint (its refusals say a merchant key is needed).
fn is_mcp(req: &Request) -> bool {
    let path = req.uri().path();
    path == "/mcp" || path.starts_with("/mcp/")
}

/// The 401 of a request without a usable key; on `/mcp` it says that MCP needs a merchant key.
fn refused(req: &Request, why: &str) -> ApiError {
    if is_mcp(req) {
        ApiError::unauthorized(format!(
            "{why}: /mcp needs a merchant key (Authorization: Bearer KEY)"
        ))
    } else {
        ApiError::unauthorized(format!("{why} (Authorization: Bearer KEY)"))
    }
}

/// Middleware: 401 without a live key; else the [`Principal`] goes into the extensions.
///
/// A failed authentication (no key, an unknown or revoked key) takes a token from the client
/// address's bucket (`--auth-fail-rate`, `--auth-fail-burst`); past the burst the failing
/// requests get 429 with `Retry-After` instead of 401. Requests with a valid key are never
/// refused for that, so one misbehaving client behind a shared address (a proxy) cannot lock
/// the others out. A key store that cannot be reached is 503 with `Retry-After`.
pub async fn require_key(
    State(state): State<SharedState>,
    mut req: Request,
    next: Next,
) -> Response {
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let failed = |req: &Request, why: &str| -> Response {
        if let Some(ip) = &client {
            if let Err(wait) = state.auth_failures.check(ip) {
                return ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many failed authentications from this address; retry later",
                )
                .with_retry_after(wait)
                .into_response();
            }
        }
        refused(req, why).into_response()
    };
    let Some(token) = bearer(&req).map(str::to_owned) else {
        return failed(&req, "missing bearer key");
    };
    let keys = Arc::clone(&state.keys);
    let lookup = tokio::task::spawn_blocking(move || keys.authenticate(&token)).await;
    let owner = match lookup {
        Ok(Ok(Some(owner))) => owner,
        Ok(Ok(None)) => return failed(&req, "the key is not valid (unknown or revoked)"),
        Ok(Err(e)) => return ApiError::from(e).into_response(),
        Err(e) => return ApiError::internal(&e).into_response(),
    };
    if let Some(cell) = req.extensions().get::<KeyIdCell>() {
        let _ = cell.0.set(owner.id.clone());
    }
    req.extensions_mut().insert(Principal {
        key_id: owner.id,
        role: owner.role,
        merchant: owner.merchant,
    });
    next.run(req).await
}

/// Carries the authenticated key id from the auth layer back to the access log.
#[derive(Clone, Debug)]
pub struct KeyIdCell(pub Arc<std::sync::OnceLock<String>>);
