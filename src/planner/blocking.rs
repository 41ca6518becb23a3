//! Synchronous store calls of the planner, run through `crate::offload` so a SQLite write (or a
//! busy wait on a locked file) never holds an async worker.

use std::sync::Arc;

use super::error::PlanError;
use super::store::PlanStore;
use crate::agent::{AgentError, AgentStore};

/// Runs `f` on the plan store without holding an async worker (`crate::offload`).
pub(super) async fn plans<T: Send + 'static>(
    store: &Arc<PlanStore>,
    f: impl FnOnce(&PlanStore) -> Result<T, PlanError> + Send + 'static,
) -> Result<T, PlanError> {
    let store = Arc::clone(store);
    crate::offload::blocking(move || f(&store))
        .await
        .map_err(|e| PlanError::Agent(AgentError::Join(e)))?
}

/// Runs `f` on the agent's store without holding an async worker (`crate::offload`).
pub(super) async fn agent<T: Send + 'static>(
    store: &Arc<AgentStore>,
    f: impl FnOnce(&AgentStore) -> Result<T, PlanError> + Send + 'static,
) -> Result<T, PlanError> {
    let store = Arc::clone(store);
    crate::offload::blocking(move || f(&store))
        .await
        .map_err(|e| PlanError::Agent(AgentError::Join(e)))?
}
