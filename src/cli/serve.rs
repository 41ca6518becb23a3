//! `memex serve`: the composition root of the HTTP service (embedder, batching queue, stores,
//! agent), then `memex::serve` does the rest.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use memex::embed::queue::{EmbedQueue, QueueOptions};
use memex::embed::Embedder;
use memex::kb::follow::Follower;
use memex::kb::KnowledgeBase;
use memex::serve::ops::WorkerInfo;
use memex::serve::{AppState, ServeOptions};
use rmcp::transport::StreamableHttpServerConfig;

use super::GlobalArgs;

/// Arguments of `memex serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the bound address is printed on stderr).
    #[arg(long, env = "MEMEX_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, env = "MEMEX_BODY_LIMIT", default_value_t = 2 * 1024 * 1024)]
    pub body_limit: usize,
    /// Requests per second per key (0: unlimited); more: 429 with Retry-After.
    #[arg(long, env = "MEMEX_RATE_LIMIT", default_value_t = 200.0)]
    pub rate_limit: f64,
    /// Burst size of the per-key rate limit.
    #[arg(long, env = "MEMEX_RATE_BURST", default_value_t = 2000.0)]
    pub rate_burst: f64,
    /// Seconds a request may take before 504.
    #[arg(long, env = "MEMEX_REQUEST_TIMEOUT", default_value_t = 300, value_parser = super::counts::bounded(1, 86_400))]
    pub request_timeout: usize,
    /// Seconds a client may take to send a request's headers (and the longest a kept-alive
    /// connection may sit idle); slower: the connection is closed.
    #[arg(long, env = "MEMEX_HEADER_TIMEOUT", default_value_t = 10, value_parser = super::counts::bounded(1, 3600))]
    pub header_timeout: usize,
    /// Seconds a client may take to send a request's body; slower: 408.
    #[arg(long, env = "MEMEX_BODY_TIMEOUT", default_value_t = 30, value_parser = super::counts::bounded(1, 3600))]
    pub body_timeout: usize,
    /// Failed authentications per second per client address (0: unlimited); past the burst the
    /// failing requests get 429 with Retry-After (requests with a valid key are not affected).
    #[arg(long, env = "MEMEX_AUTH_FAIL_RATE", default_value_t = 1.0)]
    pub auth_fail_rate: f64,
    /// Burst of failed authentications per client address.
    #[arg(long, env = "MEMEX_AUTH_FAIL_BURST", default_value_t = 20.0)]
    pub auth_fail_burst: f64,
    /// Agent turns (ask, approvals, plans) running at once; more wait, then 503.
    #[arg(long, env = "MEMEX_MAX_AGENT_TURNS", default_value_t = 8, value_parser = super::counts::bounded(1, 1024))]
    pub max_agent_turns: usize,
    /// Embedding requests that may wait; one more is answered 503 with Retry-After.
    #[arg(long, env = "MEMEX_EMBED_QUEUE", default_value_t = 256, value_parser = super::counts::bounded(1, 1_000_000))]
    pub embed_queue: usize,
    /// Most texts per embedding batch across requests.
    #[arg(long, env = "MEMEX_EMBED_BATCH", default_value_t = 64, value_parser = super::counts::bounded(1, 1024))]
    pub embed_batch: usize,
    /// This worker's name: in every access-log line, in `/readyz` and as the `worker` label of
    /// every metric (1 to 64 letters, digits, '.', '_', '-', ':'; default: host name and port).
    #[arg(long, env = "MEMEX_WORKER_ID", value_name = "NAME")]
    pub worker_id: Option<String>,
    /// With --kb-url: how often (milliseconds) to look for a newly published knowledge base.
    #[arg(long, env = "MEMEX_KB_POLL_MS", default_value_t = 2000, value_parser = super::counts::bounded(50, 3_600_000))]
    pub kb_poll_ms: usize,
    #[command(flatten)]
    pub index: super::kb::IndexArg,
    /// Retention applied hourly while serving: episodes stored more than this many days ago
    /// (as `memex prune --episodes-retention-days`). 1 to 36500.
    #[arg(long, env = "MEMEX_EPISODES_RETENTION_DAYS", value_name = "DAYS", value_parser = super::counts::bounded(1, 36_500))]
    pub episodes_retention_days: Option<usize>,
    /// Retention applied hourly while serving: conversations idle for more than this many days
    /// (as `memex prune --conversations-retention-days`). 1 to 36500.
    #[arg(long, env = "MEMEX_CONVERSATIONS_RETENTION_DAYS", value_name = "DAYS", value_parser = super::counts::bounded(1, 36_500))]
    pub conversations_retention_days: Option<usize>,
}

/// `memex serve`.
pub fn run(g: &GlobalArgs, a: ServeArgs) -> anyhow::Result<ExitCode> {
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(16))
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(g, a))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(g: &GlobalArgs, a: ServeArgs) -> anyhow::Result<()> {
    let data_dir = g.data_dir();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let state_url = g.state_url()?;
    tracing::info!(target: "memex::serve", state = %state_url.redacted(), "shared state");
    let keys = Arc::new(memex::serve::keys::KeyStore::open_state(&state_url)?);
    let worker_id = worker_id(&a)?;
    let metrics = Arc::new(memex::serve::metrics::Metrics::with_worker(&worker_id)?);
    let model: Arc<dyn Embedder> =
        Arc::new(g.load_embedder().context("loading the embedding model")?);
    let queue = EmbedQueue::start(
        model,
        QueueOptions {
            capacity: a.embed_queue,
            max_batch_texts: a.embed_batch,
        },
        Some(metrics.clone()),
    )
    .context("cannot start the embedding thread")?;
    let embedder: Arc<dyn Embedder> = Arc::new(queue.embedder());
    let (kb, kb_follower) = open_kb(g, &a, &data_dir, Arc::clone(&embedder))?;
    // The composition root of every surface (src/cli/compose.rs), over the batching embedder
    // and the served knowledge base: the agent routes, /mcp and the memory routes share its
    // stores, tools and guards.
    let root = super::compose::Memex::open(
        g,
        super::compose::Given {
            embedder: Some(Arc::clone(&embedder)),
            kb: Some(kb),
        },
    )
    .await?;
    let options = ServeOptions {
        body_limit: a.body_limit,
        rate_limit: a.rate_limit,
        rate_burst: a.rate_burst,
        request_timeout: Duration::from_secs(a.request_timeout as u64),
        max_agent_turns: a.max_agent_turns,
        header_read_timeout: Duration::from_secs(a.header_timeout as u64),
        body_read_timeout: Duration::from_secs(a.body_timeout as u64),
        auth_fail_rate: a.auth_fail_rate,
        auth_fail_burst: a.auth_fail_burst,
        ..ServeOptions::default()
    };
    let agent = if super::errors::require_llm(g).is_ok() {
        Some(memex::serve::agent_routes::AgentService::new(
            root.agent().await?,
            root.planner.clone(),
            options.max_agent_turns,
            options.agent_wait,
            Arc::clone(&metrics),
        )?)
    } else {
        tracing::warn!(
            target: "memex::serve",
            "no LLM is configured: the agent routes answer 503 (set MEMEX_LLM_BASE_URL or GROQ_API_KEY)"
        );
        None
    };
    let state = Arc::new(AppState {
        agent_store: Arc::clone(&root.store),
        keys,
        queue,
        kb: Arc::clone(&root.kb),
        episodes: Arc::clone(&root.episodes),
        agent,
        metrics,
        limiter: memex::serve::limits::RateLimiter::new(options.rate_limit, options.rate_burst),
        auth_failures: memex::serve::limits::RateLimiter::new(
            options.auth_fail_rate,
            options.auth_fail_burst,
        ),
        data_dir,
        options,
        ingest_lock: tokio::sync::Mutex::new(()),
        worker: WorkerInfo {
            id: worker_id,
            state: Some(g.state_url()?),
            kb: kb_follower.clone(),
        },
    });
    let listener = tokio::net::TcpListener::bind(&a.bind)
        .await
        .map_err(|source| memex::serve::ServeError::Bind {
            addr: a.bind.clone(),
            source,
        })?;
    let addr = listener.local_addr()?;
    eprintln!("listening on {addr}");
    let stop = tokio_util::sync::CancellationToken::new();
    if a.episodes_retention_days.is_some() || a.conversations_retention_days.is_some() {
        let conversations = match a.conversations_retention_days {
            Some(_) => Some(super::agent::conversation_store(g, &state.data_dir).await?),
            None => None,
        };
        tokio::spawn(super::forget::retention_loop(
            Arc::clone(&state.episodes),
            conversations,
            a.episodes_retention_days,
            a.conversations_retention_days,
            stop.clone(),
        ));
    }
    if let Some(follower) = kb_follower {
        spawn_kb_watcher(
            follower,
            Duration::from_millis(a.kb_poll_ms as u64),
            stop.clone(),
        );
    }
    let mcp = mcp_service(&root, &state, addr, stop.clone())?;
    let limit = state.options.body_limit;
    let app = memex::serve::router_with(Arc::clone(&state), |r| {
        memex::serve::mount_limited(r, "/mcp", mcp, limit)
    });
    memex::serve::run(listener, app, state, Duration::from_secs(60), stop).await?;
    eprintln!("memex serve stopped");
    Ok(())
}

/// `--worker-id`, checked, or the default: the host name and the port of `--bind` (the
/// process id when the port is chosen by the system).
fn worker_id(a: &ServeArgs) -> anyhow::Result<String> {
    match a.worker_id.as_deref().map(str::trim) {
        Some(id) if memex::serve::ops::valid_worker_id(id) => Ok(id.to_string()),
        Some(_) => {
            anyhow::bail!("--worker-id must be 1 to 64 letters, digits, '.', '_', '-' or ':'")
        }
        None => {
            let port = a
                .bind
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .filter(|p| *p != 0);
            Ok(match port {
                Some(p) => memex::serve::ops::default_worker_id(p),
                None => format!(
                    "{}-pid{}",
                    memex::serve::ops::default_worker_id(0).trim_end_matches(":0"),
                    std::process::id()
                ),
            })
        }
    }
}

/// The knowledge base served: the data directory's own, or with `--kb-url` a follower of the
/// published generations (copied into `kb-gens/`, swapped as new ones are published).
fn open_kb(
    g: &GlobalArgs,
    a: &ServeArgs,
    data_dir: &std::path::Path,
    embedder: Arc<dyn Embedder>,
) -> anyhow::Result<(Arc<KnowledgeBase>, Option<Arc<Follower>>)> {
    let options = g.tuning.kb_options(a.index.kind)?;
    match g.shared_kb()? {
        None => {
            let kb = KnowledgeBase::open_with(data_dir, embedder, options)
                .context("cannot open the knowledge base")?;
            Ok((Arc::new(kb), None))
        }
        Some(shared) => {
            let url = shared.url().to_string();
            let follower = Follower::open(shared, data_dir, embedder, options)
                .with_context(|| format!("cannot open the published knowledge base at {url}"))?;
            let follower = Arc::new(follower);
            Ok((Arc::clone(follower.kb()), Some(follower)))
        }
    }
}

/// Follows the published knowledge base: every `poll`, a newly announced generation is
/// copied, verified and swapped in (see `memex::kb::follow`). Stops with the server.
fn spawn_kb_watcher(
    follower: Arc<Follower>,
    poll: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
            let f = Arc::clone(&follower);
            match tokio::task::spawn_blocking(move || f.refresh()).await {
                Ok(Ok(Some(generation))) => tracing::info!(
                    target: "memex::serve",
                    generation = %generation,
                    "serving a newly published knowledge base"
                ),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(
                    target: "memex::serve",
                    error = %e,
                    "cannot take the published knowledge base; still serving the previous one"
                ),
                Err(e) => {
                    tracing::warn!(target: "memex::serve", error = %e, "the knowledge-base watcher failed")
                }
            }
        }
    });
}

/// The MCP service mounted at `/mcp`: the same memory and domain tools as `memex mcp`, over the
/// server's batching embedder and stores. The bearer key (checked by the auth layer before this
/// service runs) decides the merchant; an admin key has no merchant and is refused (403, by
/// `memex::serve::mount_limited`).
fn mcp_service(
    root: &super::compose::Memex<'_>,
    state: &AppState,
    bound: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<memex::mcp::http::McpHttpService> {
    // One gate: with an agent, MCP calls share its rate limits, cache and metrics.
    let deps = root.mcp_deps(state.agent.as_ref().map(|s| s.agent().gate()))?;
    let merchant_of: memex::mcp::http::MerchantOf = Arc::new(|parts: &http::request::Parts| {
        parts
            .extensions
            .get::<memex::serve::auth::Principal>()
            .and_then(|p| p.merchant.clone())
    });
    // rmcp checks the Host header against DNS rebinding; on loopback keep its default list, and
    // on a routable address rely on the bearer key, which a rebinding browser cannot attach.
    let config = if bound.ip().is_loopback() {
        StreamableHttpServerConfig::default()
    } else {
        StreamableHttpServerConfig::default().disable_allowed_hosts()
    };
    Ok(memex::mcp::http::streamable_http_service_with(
        Arc::new(deps),
        merchant_of,
        config.with_cancellation_token(stop),
    ))
}
