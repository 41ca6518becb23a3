//! The demo environment shared by the agent and planner tests: the real embedder, loaded once
//! per test binary, and the knowledge base over `data/kb`, ingested once per test binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use memex::embed::Embedder;
use memex::kb::{IngestOptions, KnowledgeBase};
use memex::tools::{Tool, ToolContext, ToolError};
use serde_json::{json, Value};

use super::model;

/// The real embedder, shared by every test of the binary.
pub fn embedder() -> Arc<dyn Embedder> {
    static E: OnceLock<Arc<dyn Embedder>> = OnceLock::new();
    Arc::clone(E.get_or_init(|| Arc::new(model::embedder())))
}

/// A knowledge-base directory holding `data/kb`, ingested on first use.
pub fn shared_kb_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "memex-demo-kb-{}-{}",
            env!("CARGO_CRATE_NAME"),
            std::process::id()
        ));
        let kb = KnowledgeBase::open(&dir, embedder()).expect("the knowledge base opens");
        kb.ingest(
            &[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/kb")],
            &IngestOptions::default(),
        )
        .expect("data/kb ingests");
        dir
    })
}

/// `check_gateway_status`, a read-only tool that fails transiently its first `fail_first`
/// calls (`usize::MAX`: always), then succeeds.
pub struct Flaky {
    pub calls: AtomicUsize,
    fail_first: usize,
    schema: Value,
}

impl Flaky {
    /// A flaky tool failing its first `fail_first` calls.
    pub fn new(fail_first: usize) -> Arc<Flaky> {
        Arc::new(Flaky {
            calls: AtomicUsize::new(0),
            fail_first,
            schema: json!({"type": "object", "properties": {}, "additionalProperties": false}),
        })
    }

    /// Calls made so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Tool for Flaky {
    fn name(&self) -> &str {
        "check_gateway_status"
    }
    fn description(&self) -> &str {
        "Checks the gateway status."
    }
    fn parameters(&self) -> &Value {
        &self.schema
    }
    fn read_only(&self) -> bool {
        true
    }
    async fn call(&self, _args: Value, _ctx: &ToolContext) -> Result<Value, ToolError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail_first {
            Err(ToolError::Transient("the status service timed out".into()))
        } else {
            Ok(json!({"gateway": "operational"}))
        }
    }
}
