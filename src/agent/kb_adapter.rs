//! Adapts the knowledge base to the `search_knowledge_base` tool's seam.

use std::sync::Arc;

use crate::domain::payments::{KnowledgeHit, KnowledgeSearch};
use crate::kb::{KnowledgeBase, SearchMode};

/// Hybrid search over the real knowledge base, for the payments tool.
#[derive(Debug, Clone)]
pub struct KbSearch(pub Arc<KnowledgeBase>);

impl KnowledgeSearch for KbSearch {
    fn search(&self, query: &str, k: usize) -> Result<Vec<KnowledgeHit>, String> {
        let hits = self
            .0
            .search(query, k, SearchMode::Hybrid)
            .map_err(|e| e.to_string())?;
        Ok(hits
            .into_iter()
            .map(|h| KnowledgeHit {
                chunk_id: h.chunk_id as i64,
                source: h.source,
                heading: h.heading,
                text: h.text,
                score: h.score as f32,
            })
            .collect())
    }
}
