//! Worker operations: the worker's name (`--worker-id`, in the access log, `/readyz` and as
//! the `worker` label of every metric) and the report of the shared stores `/readyz` gives.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::kb::follow::Follower;
use crate::kb::KnowledgeBase;
use crate::state::StateUrl;

/// How long `/readyz` waits for a Redis `PING`.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Who this worker is and which shared stores it uses.
#[derive(Debug, Default)]
pub struct WorkerInfo {
    /// The worker's name.
    pub id: String,
    /// The agent-state backend (`--state`), reported redacted.
    pub state: Option<StateUrl>,
    /// The published knowledge base followed (`--kb-url`), if any.
    pub kb: Option<Arc<Follower>>,
}

/// Whether `id` may name a worker: 1 to 64 ASCII letters, digits, `.`, `_`, `-` or `:`
/// (it goes into log lines and metric labels verbatim).
pub fn valid_worker_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

/// The default worker name: the host name and the port (`host:8080`).
pub fn default_worker_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "memex".to_string());
    let id: String = format!("{host}:{port}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
        .take(64)
        .collect();
    if valid_worker_id(&id) {
        id
    } else {
        format!("pid-{}", std::process::id())
    }
}

/// `PING` to the Redis at `url` on the process's one connection to it
/// ([`crate::redisdb`]), bounded by [`PING_TIMEOUT`] for connecting and the reply together.
async fn redis_ping(url: &str) -> bool {
    let Ok(db) = crate::redisdb::RedisDb::open(url) else {
        return false;
    };
    db.store("state").ping_fresh(PING_TIMEOUT).await
}

/// The shared stores as `/readyz` reports them, and whether every one is reachable.
/// `episodic_url` is the episodic store's description (never a password) and `episodes_ok`
/// the episodic check `/readyz` already ran; `kb` is the knowledge base served.
pub async fn stores(
    worker: &WorkerInfo,
    episodic_url: String,
    kb: &KnowledgeBase,
    episodes_ok: bool,
    kb_ok: bool,
) -> (bool, Value) {
    let episodic_backend = episodic_url.split("://").next().unwrap_or("?").to_string();
    let (state_json, state_ok) = match &worker.state {
        None => (Value::Null, true),
        Some(url @ StateUrl::Sqlite(path)) => {
            let ok = path.parent().is_some_and(|p| p.is_dir());
            (
                json!({"backend": "sqlite", "url": url.redacted(), "reachable": ok}),
                ok,
            )
        }
        Some(url @ StateUrl::Redis(raw)) => {
            let ok = redis_ping(raw).await;
            (
                json!({"backend": "redis", "url": url.redacted(), "reachable": ok}),
                ok,
            )
        }
    };
    let kb = match &worker.kb {
        Some(follower) => json!({
            "url": follower.shared().url().to_string(),
            "generation": kb.published_generation(),
            "reachable": kb_ok,
        }),
        None => json!({"url": null, "generation": null, "reachable": kb_ok}),
    };
    let body = json!({
        "episodic": {"backend": episodic_backend, "url": episodic_url, "reachable": episodes_ok},
        "state": state_json,
        "knowledge_base": kb,
    });
    (state_ok, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_are_checked_and_the_default_is_valid() {
        assert!(valid_worker_id("w-1"));
        assert!(valid_worker_id("host.example:8080"));
        assert!(!valid_worker_id(""));
        assert!(!valid_worker_id("a b"));
        assert!(!valid_worker_id("x\"}"));
        assert!(!valid_worker_id(&"a".repeat(65)));
        assert!(valid_worker_id(&default_worker_id(8080)));
    }
}
