//! `AgentService`: the agent, its planner and the cap on concurrent turns, as the server's
//! state holds it (the routes that use it are `agent_routes.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use super::metrics::Metrics;
use crate::agent::{Agent, TurnReport};
use crate::planner::{PlanError, Planner, PlannerConfig};

/// The agent and its planner, with the cap on concurrent turns.
#[derive(Clone)]
pub struct AgentService {
    pub(super) agent: Arc<Agent>,
    pub(super) planner: Arc<Planner>,
    turns: Arc<Semaphore>,
    max_turns: u32,
    wait: Duration,
    pub(super) metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AgentService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentService")
            .field("max_turns", &self.max_turns)
            .finish_non_exhaustive()
    }
}

impl AgentService {
    /// The agent behind the routes (its gate is shared with `/mcp`).
    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
    }

    /// Wraps `agent` and a planner over it with `planner` settings; at most `max_turns` turns
    /// run at once, a turn waits up to `wait` for a slot before 503.
    pub fn new(
        agent: Agent,
        planner: PlannerConfig,
        max_turns: usize,
        wait: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PlanError> {
        let agent = Arc::new(agent);
        let planner = Arc::new(Planner::new(Arc::clone(&agent), planner)?);
        let max_turns = u32::try_from(max_turns.clamp(1, 1024)).unwrap_or(8);
        Ok(AgentService {
            agent,
            planner,
            turns: Arc::new(Semaphore::new(max_turns as usize)),
            max_turns,
            wait,
            metrics,
        })
    }

    pub(super) async fn permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(self.wait, Arc::clone(&self.turns).acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(ApiError::unavailable(
                "busy",
                "too many agent turns are running; retry shortly",
                2,
            )),
        }
    }

    /// Waits (up to `limit`) until no agent turn runs, so shutdown never cuts one short.
    pub async fn drain(&self, limit: Duration) {
        let all = Arc::clone(&self.turns).acquire_many_owned(self.max_turns);
        let _ = tokio::time::timeout(limit, all).await;
    }

    /// LLM tokens over all recorded turns.
    pub async fn llm_tokens(&self) -> Option<i64> {
        let agent = Arc::clone(&self.agent);
        tokio::task::spawn_blocking(move || agent.store().stats().ok())
            .await
            .ok()
            .flatten()
            .and_then(|s| i64::try_from(s.llm_tokens).ok())
    }

    pub(super) fn count_tools(&self, report: &TurnReport) {
        for c in &report.tool_calls {
            self.metrics
                .tool_calls
                .with_label_values(&[c.status.as_str()])
                .inc();
        }
    }
}
