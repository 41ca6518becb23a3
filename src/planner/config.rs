//! The planner's tunables.

use std::time::Duration;

/// Tunables of the planner.
#[derive(Debug, Clone)]
pub struct PlannerConfig {
    /// Most steps a plan may have (a longer plan is invalid).
    pub max_steps: usize,
    /// Most steps executing at the same time.
    pub max_concurrency: usize,
    /// Tool calls per step before a transient failure fails it.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// Longest wait for a tool's rate limit before the attempt counts as failed.
    pub rate_limit_wait: Duration,
    /// Whether the planning call gets the knowledge-base and episode memory blocks.
    pub use_memory: bool,
    /// Whether a completed plan's summary is saved as an episode of its merchant.
    pub save_episode: bool,
    /// Longest a single tool call may take before the attempt counts as a transient failure.
    pub step_timeout: Duration,
    /// Longest wait for the final summary call (then a plain account is written instead).
    pub summary_timeout: Duration,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            max_steps: 12,
            max_concurrency: 4,
            max_attempts: 3,
            retry_backoff: Duration::from_millis(200),
            rate_limit_wait: Duration::from_secs(10),
            use_memory: true,
            save_episode: true,
            step_timeout: Duration::from_secs(60),
            summary_timeout: Duration::from_secs(30),
        }
    }
}
