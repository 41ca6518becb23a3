//! The server's state: what every request handler may use ([`AppState`]) and its limits
//! ([`ServeOptions`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::agent_service::AgentService;
use super::{keys, limits, metrics};
use crate::embed::queue::EmbedQueue;
use crate::episodic::EpisodicStore;
use crate::kb::KnowledgeBase;

/// Limits and sizes of the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest request body in bytes (larger: 413).
    pub body_limit: usize,
    /// Requests per second per key on average (0 = unlimited); more: 429 with `Retry-After`.
    pub rate_limit: f64,
    /// Burst size of the per-key bucket.
    pub rate_burst: f64,
    /// Longest a request may take before 504.
    pub request_timeout: Duration,
    /// Most agent turns (ask, approve, plans) running at once.
    pub max_agent_turns: usize,
    /// How long a turn waits for a free slot before 503.
    pub agent_wait: Duration,
    /// The model name reported by `/v1/embeddings`.
    pub model_name: String,
    /// Longest a client may take to send a request's headers (also the idle time of a kept-alive
    /// HTTP/1 connection) before the connection is closed.
    pub header_read_timeout: Duration,
    /// Longest a client may take to send a request's body before 408.
    pub body_read_timeout: Duration,
    /// Failed authentications per second per client address on average (0 = unlimited);
    /// past the burst, failing requests get 429 with `Retry-After`.
    pub auth_fail_rate: f64,
    /// Burst of failed authentications per client address.
    pub auth_fail_burst: f64,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            body_limit: 2 * 1024 * 1024,
            rate_limit: 200.0,
            rate_burst: 2000.0,
            request_timeout: Duration::from_secs(300),
            max_agent_turns: 8,
            agent_wait: Duration::from_secs(30),
            model_name: "all-MiniLM-L6-v2".into(),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            auth_fail_rate: 1.0,
            auth_fail_burst: 20.0,
        }
    }
}

/// Everything a request handler may use.
pub struct AppState {
    /// The API keys.
    pub keys: Arc<keys::KeyStore>,
    /// The batching embedder every route uses.
    pub queue: EmbedQueue,
    /// The knowledge base (opened over the queue). With `--kb-url` it is the follower's
    /// ([`super::ops::WorkerInfo::kb`]), whose content is swapped to each published generation.
    pub kb: Arc<KnowledgeBase>,
    /// The episodic store.
    pub episodes: Arc<dyn EpisodicStore>,
    /// The agent and planner, when configured.
    pub agent: Option<AgentService>,
    /// The agent's store (sessions, actions, audit): readable with or without a model.
    pub agent_store: Arc<crate::agent::AgentStore>,
    /// Metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// Per-key rate limits.
    pub limiter: limits::RateLimiter,
    /// Failed authentications per client address.
    pub auth_failures: limits::RateLimiter,
    /// The data directory (documents posted over HTTP are kept under `documents/`).
    pub data_dir: PathBuf,
    /// Limits.
    pub options: ServeOptions,
    /// One document ingestion at a time.
    pub ingest_lock: tokio::sync::Mutex<()>,
    /// The worker's name and shared stores (access log, `/readyz`, `--kb-url`).
    pub worker: super::ops::WorkerInfo,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("data_dir", &self.data_dir)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Shared state of the router.
pub type SharedState = Arc<AppState>;
