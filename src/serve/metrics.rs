//! Prometheus metrics of the service (`GET /metrics`, text exposition format).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::embed::queue::BatchObserver;

/// Every metric the server exports, registered in its own registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route template, method and status.
    pub requests: IntCounterVec,
    /// Request latency by route template, in seconds.
    pub latency: HistogramVec,
    /// Texts per embedding batch, and requests per batch.
    pub batch: HistogramVec,
    /// Embedding requests waiting or running.
    pub queue_depth: IntGauge,
    /// Tool calls made by agent turns served here, by status.
    pub tool_calls: IntCounterVec,
    /// Approval decisions by outcome (`approved`, `rejected`).
    pub approvals: IntCounterVec,
    /// LLM tokens over all recorded turns (read from the agent store at scrape time).
    pub llm_tokens: IntGauge,
}

/// Metric registration failed (a programming error: duplicate names).
#[derive(Debug, thiserror::Error)]
#[error("cannot register the metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, MetricsError> {
        Self::build(None)
    }

    /// Like [`Metrics::new`], with a `worker="NAME"` label on every series (Prometheus const
    /// label), so the series of many workers behind one load balancer stay apart.
    pub fn with_worker(worker: &str) -> Result<Self, MetricsError> {
        Self::build(Some(worker))
    }

    fn build(worker: Option<&str>) -> Result<Self, MetricsError> {
        let labels = worker
            .map(|w| std::collections::HashMap::from([("worker".to_string(), w.to_string())]));
        let registry = Registry::new_custom(Some("memex".into()), labels)?;
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ],
            ),
            &["method", "route"],
        )?;
        let batch = HistogramVec::new(
            HistogramOpts::new("embed_batch_size", "Texts and requests per embedding batch")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            &["unit"],
        )?;
        let queue_depth =
            IntGauge::new("embed_queue_depth", "Embedding requests waiting or running")?;
        let tool_calls = IntCounterVec::new(
            Opts::new("tool_calls_total", "Tool calls of agent turns by status"),
            &["status"],
        )?;
        let approvals = IntCounterVec::new(
            Opts::new("approvals_total", "Approval decisions by outcome"),
            &["decision"],
        )?;
        let llm_tokens = IntGauge::new("llm_tokens", "LLM tokens over all recorded agent turns")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(batch.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(tool_calls.clone()))?;
        registry.register(Box::new(approvals.clone()))?;
        registry.register(Box::new(llm_tokens.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            batch,
            queue_depth,
            tool_calls,
            approvals,
            llm_tokens,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(target: "memex::serve", error = %e, "cannot encode the metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl BatchObserver for Metrics {
    fn batch(&self, requests: usize, texts: usize) {
        self.batch
            .with_label_values(&["texts"])
            .observe(texts as f64);
        self.batch
            .with_label_values(&["requests"])
            .observe(requests as f64);
    }
}
