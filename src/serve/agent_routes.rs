//! Every route that calls the agent or the planner: ask (JSON and SSE), audit, actions and
//! their approval, plans. Kept in one file so the agent's call path can be rewired in one place.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Principal;
use super::error::{ApiError, JsonBody};
use super::state::SharedState;
use crate::agent::{ActionStatus, Agent, AgentError, Progress, Silent};
use crate::approvals::{ApprovalError, Continuation, DecisionRequest, Verdict};
use crate::planner::store::PlanStore;
use crate::planner::{PlanError, PlanReport};

pub use super::agent_service::AgentService;

/// The routes of this file.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/v1/merchants/{mid}/ask", post(ask))
        .route("/v1/sessions/{sid}/audit", get(audit))
        .route("/v1/actions", get(actions))
        .route("/v1/actions/{id}/approve", post(approve))
        .route("/v1/actions/{id}/reject", post(reject))
        .route("/v1/merchants/{mid}/plans", post(create_plan))
        .route("/v1/plans/{id}", get(show_plan))
        .route("/v1/plans/{id}/resume", post(resume_plan))
}

fn service(state: &SharedState) -> Result<&AgentService, ApiError> {
    state.agent.as_ref().ok_or_else(|| {
        ApiError::unavailable(
            "llm_not_configured",
            "the agent is not available: no language model is configured (--llm-base-url / MEMEX_LLM_BASE_URL)",
            60,
        )
    })
}

fn agent_error(e: AgentError) -> ApiError {
    if crate::embed::EmbedError::is_overloaded_in(&e) {
        return ApiError::unavailable(
            "queue_full",
            "the embedding queue is full; retry shortly",
            1,
        );
    }
    match &e {
        AgentError::Llm(_) => ApiError::new(StatusCode::BAD_GATEWAY, "llm", e.to_string()),
        AgentError::SessionMerchant { .. } | AgentError::UnknownSession(_) => {
            ApiError::not_found("no such session")
        }
        AgentError::UnknownAction { .. } => ApiError::not_found("no such action"),
        AgentError::AlreadyDecided { .. } => ApiError::conflict(e.to_string()),
        AgentError::SessionBusy(_) => {
            ApiError::new(StatusCode::CONFLICT, "session_busy", e.to_string())
        }
        AgentError::Invalid(m) => ApiError::bad_request(m.clone()),
        AgentError::ToolUnavailable { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "tool_unavailable",
            e.to_string(),
        ),
        _ => ApiError::internal(&e),
    }
}

fn plan_error(e: PlanError) -> ApiError {
    match e {
        PlanError::Agent(a) => agent_error(a),
        PlanError::Llm(_) => ApiError::new(StatusCode::BAD_GATEWAY, "llm", e.to_string()),
        PlanError::UnknownPlan(_) => ApiError::not_found("no such plan"),
        PlanError::UnknownAction(_) => ApiError::not_found("no such action"),
        PlanError::Busy(_) | PlanError::AlreadyDecided { .. } => ApiError::conflict(e.to_string()),
        PlanError::InvalidPlan { .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plan",
            e.to_string(),
        ),
        PlanError::Invalid(m) => ApiError::bad_request(m),
        other => ApiError::internal(&other),
    }
}

/// Runs `fut` on its own task, so a client that goes away never cuts a turn (or an approval)
/// in half.
async fn detached<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(fut)
        .await
        .map_err(|e| ApiError::internal(&e))?
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(&e))?
}

/// Body of `POST /v1/merchants/{mid}/ask`.
#[derive(Debug, Deserialize)]
pub struct AskRequest {
    /// The user's message.
    pub message: String,
    /// Continue this session (default: a new one).
    #[serde(default)]
    pub session: Option<String>,
}

/// Streams a turn as it happens: every hook of [`Progress`] becomes one SSE event on an
/// unbounded channel (a turn's events are bounded by its tool-call cap and the LLM client's
/// stream caps), read by the response body.
struct LiveEvents {
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
    sent_delta: std::sync::atomic::AtomicBool,
}

impl LiveEvents {
    fn send(&self, name: &str, data: &Value) {
        // A client that went away only stops the stream; the turn itself runs to the end.
        let _ = self.tx.send(event(name, data));
    }
}

impl Progress for LiveEvents {
    fn wants_stream(&self) -> bool {
        true
    }
    fn text_delta(&self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        self.sent_delta
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.send("delta", &json!({"text": delta}));
    }
    fn memory_ready(&self, memory: &Value) {
        self.send("memory", memory);
    }
    fn tool_call(&self, id: &str, tool: &str, args: &Value) {
        self.send("tool_call", &json!({"id": id, "tool": tool, "args": args}));
    }
    fn tool_result(&self, c: &crate::agent::ToolCallReport) {
        self.send(
            "tool_result",
            &json!({"id": c.id, "tool": c.tool, "status": c.status, "result": c.result, "latency_ms": c.latency_ms}),
        );
    }
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

async fn ask(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    UrlPath(mid): UrlPath<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<AskRequest>,
) -> Result<Response, ApiError> {
    let merchant = principal.merchant(&mid)?;
    let svc = service(&state)?.clone();
    if req.message.trim().is_empty() {
        return Err(ApiError::bad_request("the message is empty"));
    }
    let session = match req.session {
        Some(s) => {
            // A bad id is refused before anything is read or written for it.
            Agent::check_session_id(&s).map_err(agent_error)?;
            let agent = Arc::clone(&svc.agent);
            let sid = s.clone();
            let owner =
                blocking(move || agent.store().session_merchant(&sid).map_err(agent_error)).await?;
            if owner.is_some_and(|o| o != merchant) {
                return Err(ApiError::not_found("no such session"));
            }
            s
        }
        None => Agent::new_session_id(),
    };
    let permit = svc.permit().await?;
    let turn_svc = svc.clone();
    if !wants_sse(&headers) {
        let turn = tokio::spawn(async move {
            let _permit = permit;
            let r = turn_svc
                .agent
                .ask(&merchant, &session, &req.message, &Silent)
                .await
                .map_err(agent_error);
            if let Ok(report) = &r {
                turn_svc.count_tools(report);
            }
            r
        });
        let report = turn.await.map_err(|e| ApiError::internal(&e))??;
        return Ok(Json(report).into_response());
    }
    // SSE: the turn runs on its own task (a client that disconnects never cuts it in half) and
    // its hooks feed the stream live: `memory`, `tool_call`/`tool_result`, `delta`s, then
    // `done` with the whole `ask --json` object, or `error`.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let live = Arc::new(LiveEvents {
        tx: tx.clone(),
        sent_delta: std::sync::atomic::AtomicBool::new(false),
    });
    tokio::spawn(async move {
        let _permit = permit;
        let r = turn_svc
            .agent
            .ask(&merchant, &session, &req.message, &*live)
            .await
            .map_err(agent_error);
        match r {
            Ok(report) => {
                turn_svc.count_tools(&report);
                if let Some(c) = &report.clarification {
                    // A distinct outcome: the agent asks instead of acting.
                    let _ = tx.send(event("clarification", &json!({"question": c.question})));
                }
                if !live.sent_delta.load(std::sync::atomic::Ordering::Relaxed)
                    && !report.answer.is_empty()
                {
                    // The answer was written by memex (a held action, an escalation), not
                    // streamed by the model: it is one delta.
                    let _ = tx.send(event("delta", &json!({"text": report.answer})));
                }
                let _ = tx.send(event(
                    "done",
                    &serde_json::to_value(&report).unwrap_or(Value::Null),
                ));
            }
            Err(e) => {
                let _ = tx.send(error_event(&e));
            }
        }
    });
    let stream = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        Ok::<Event, Infallible>,
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn event(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

fn error_event(e: &ApiError) -> Event {
    event(
        "error",
        &json!({"error": {"code": e.code, "message": e.message}}),
    )
}

async fn audit(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    UrlPath(sid): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    Agent::check_session_id(&sid).map_err(agent_error)?;
    let store = Arc::clone(&state.agent_store);
    let log = blocking(move || {
        match store.session_merchant(&sid).map_err(agent_error)? {
            Some(owner) if principal.may_see(owner.as_str()) => {}
            _ => return Err(ApiError::not_found("no such session")),
        }
        store.audit_log(&sid).map_err(agent_error)
    })
    .await?;
    Ok(Json(
        serde_json::to_value(&log).map_err(|e| ApiError::internal(&e))?,
    ))
}

/// Query of `GET /v1/actions`.
#[derive(Debug, Deserialize)]
pub struct ActionsQuery {
    /// `pending` (default), `approved`, `executed`, `rejected`, `failed` or `all`.
    pub status: Option<String>,
}

async fn actions(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<ActionsQuery>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let status = match q.status.as_deref().unwrap_or("pending") {
        "pending" => Some(ActionStatus::Pending),
        "approved" => Some(ActionStatus::Approved),
        "executed" => Some(ActionStatus::Executed),
        "rejected" => Some(ActionStatus::Rejected),
        "failed" => Some(ActionStatus::Failed),
        "all" => None,
        _ => {
            return Err(ApiError::bad_request(
                "status must be pending, approved, executed, rejected, failed or all",
            ))
        }
    };
    let store = Arc::clone(&state.agent_store);
    let list = blocking(move || {
        store
            .actions_with_status(status, 10_000)
            .map_err(agent_error)
    })
    .await?;
    Ok(Json(
        serde_json::to_value(&list).map_err(|e| ApiError::internal(&e))?,
    ))
}

async fn approve(
    state: State<SharedState>,
    principal: Extension<Principal>,
    id: UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    decide(state, principal, id, true).await
}

async fn reject(
    state: State<SharedState>,
    principal: Extension<Principal>,
    id: UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    decide(state, principal, id, false).await
}

/// Approve or reject action `id` (admin only) through the library's one approval operation
/// ([`crate::approvals::decide`]): a plan step's action continues its plan, any other continues
/// its session. The answer is `memex approve --json`'s.
async fn decide(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    UrlPath(id): UrlPath<String>,
    approve: bool,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let svc = service(&state)?.clone();
    let permit = svc.permit().await?;
    let metrics = Arc::clone(&svc.metrics);
    let verdict = if approve {
        Verdict::Approve
    } else {
        Verdict::Reject
    };
    let value = detached(async move {
        let _permit = permit;
        let req = DecisionRequest {
            action: id,
            session: None,
        };
        let decided = crate::approvals::decide(&svc.planner, &req, verdict, &Silent)
            .await
            .map_err(approval_error)?;
        if let Continuation::Chat(report) = &decided.continuation {
            svc.count_tools(report);
        }
        Ok(decided.to_json())
    })
    .await?;
    metrics
        .approvals
        .with_label_values(&[if approve { "approved" } else { "rejected" }])
        .inc();
    Ok(Json(value))
}

fn approval_error(e: ApprovalError) -> ApiError {
    match e {
        ApprovalError::Agent(e) => agent_error(e),
        ApprovalError::Plan(e) => plan_error(e),
        ApprovalError::UnknownAction(_) | ApprovalError::NotInSession { .. } => {
            ApiError::not_found("no such action")
        }
        other => ApiError::conflict(other.to_string()),
    }
}

/// Body of `POST /v1/merchants/{mid}/plans`.
#[derive(Debug, Deserialize)]
pub struct PlanRequest {
    /// The task.
    pub task: String,
    /// Plan and validate only.
    #[serde(default)]
    pub dry_run: bool,
}

async fn create_plan(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    UrlPath(mid): UrlPath<String>,
    JsonBody(req): JsonBody<PlanRequest>,
) -> Result<Json<PlanReport>, ApiError> {
    let merchant = principal.merchant(&mid)?;
    if req.task.trim().is_empty() {
        return Err(ApiError::bad_request("the task is empty"));
    }
    let svc = service(&state)?.clone();
    let permit = svc.permit().await?;
    let report = detached(async move {
        let _permit = permit;
        if req.dry_run {
            svc.planner.create(&merchant, &req.task).await
        } else {
            svc.planner.run(&merchant, &req.task, &Silent).await
        }
        .map_err(plan_error)
    })
    .await?;
    Ok(Json(report))
}

/// The plan, when this principal may see it (else 404, as for a missing plan).
async fn visible_plan(
    svc: &AgentService,
    principal: &Principal,
    id: &str,
) -> Result<PlanReport, ApiError> {
    let agent = Arc::clone(&svc.agent);
    let id = id.to_owned();
    let report = blocking(move || {
        let plans = PlanStore::open_state(agent.store().state()).map_err(plan_error)?;
        crate::planner::load_report(&plans, &id).map_err(plan_error)
    })
    .await?;
    if !principal.may_see(&report.merchant) {
        return Err(ApiError::not_found("no such plan"));
    }
    Ok(report)
}

async fn show_plan(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<PlanReport>, ApiError> {
    let svc = service(&state)?.clone();
    Ok(Json(visible_plan(&svc, &principal, &id).await?))
}

async fn resume_plan(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<PlanReport>, ApiError> {
    let svc = service(&state)?.clone();
    visible_plan(&svc, &principal, &id).await?;
    let permit = svc.permit().await?;
    let report = detached(async move {
        let _permit = permit;
        svc.planner.resume(&id, &Silent).await.map_err(plan_error)
    })
    .await?;
    Ok(Json(report))
}
