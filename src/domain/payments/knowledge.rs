//! The seam between the `search_knowledge_base` tool and whatever knowledge base backs it.
//!
//! The tool only needs ranked passages; the payments domain adapts the real knowledge base (`agent.rs`, [`KbSearch`](super::KbSearch)) (hybrid
//! search over `data/kb`) to [`KnowledgeSearch`].

use serde::{Deserialize, Serialize};

/// One passage returned by a knowledge search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnowledgeHit {
    /// Stable id of the chunk in the knowledge base.
    pub chunk_id: i64,
    /// The document it comes from (for example `refund-timelines.md`).
    pub source: String,
    /// The heading path of the section (for example `Refund Timelines > UPI`).
    pub heading: String,
    /// The passage text.
    pub text: String,
    /// Relevance score; higher is better. Only comparable within one search.
    pub score: f32,
}

/// A searchable knowledge base. Implementations are blocking; the tool calls them on a
/// blocking thread.
pub trait KnowledgeSearch: Send + Sync {
    /// The `k` passages most relevant to `query`, best first.
    fn search(&self, query: &str, k: usize) -> Result<Vec<KnowledgeHit>, KnowledgeError>;
}

/// Why a knowledge search failed; the cause is kept as its source.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct KnowledgeError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl KnowledgeError {
    /// A failure caused by `source`.
    pub fn new(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        KnowledgeError {
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }
}

impl From<&str> for KnowledgeError {
    fn from(message: &str) -> Self {
        KnowledgeError {
            message: message.to_string(),
            source: None,
        }
    }
}
