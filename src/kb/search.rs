//! Search: vector (HNSW), keyword (FTS5 BM25) and hybrid (reciprocal rank fusion of both).

use std::str::FromStr;

use super::fts::{self, KeywordPlan};
use super::fusion::rrf;
use super::{Core, KbError, KnowledgeBase};
use crate::index::VectorIndex;

/// The most results one search returns; larger requests are clamped to it, so no buffer is
/// ever sized from an unchecked caller value.
pub const MAX_K: usize = 10_000;

/// Which retrieval to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchMode {
    /// Reciprocal rank fusion of vector and keyword results.
    #[default]
    Hybrid,
    /// Nearest neighbours of the query embedding only.
    Vector,
    /// FTS5 BM25 only.
    Keyword,
}

impl FromStr for SearchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "hybrid" => Ok(SearchMode::Hybrid),
            "vector" => Ok(SearchMode::Vector),
            "keyword" => Ok(SearchMode::Keyword),
            other => Err(format!(
                "unknown search mode {other:?}; use hybrid, vector or keyword"
            )),
        }
    }
}

impl std::fmt::Display for SearchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SearchMode::Hybrid => "hybrid",
            SearchMode::Vector => "vector",
            SearchMode::Keyword => "keyword",
        })
    }
}

/// One search result with its provenance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SearchHit {
    /// The chunk's id in the store.
    pub chunk_id: u64,
    /// Path of the source file.
    pub source: String,
    /// Heading path, joined with `" > "`.
    pub heading: String,
    /// The chunk text.
    pub text: String,
    /// Hybrid: fused RRF score; vector: cosine similarity; keyword: negated BM25.
    pub score: f64,
    /// 1-based rank in the vector results, if present there.
    pub vector_rank: Option<usize>,
    /// 1-based rank in the keyword results, if present there.
    pub keyword_rank: Option<usize>,
    /// First source line.
    pub line_start: usize,
    /// Last source line.
    pub line_end: usize,
    /// Record metadata (JSONL sources), as JSON text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
}

impl Core {
    /// Searches for `query`, embedding it when the mode needs a vector.
    pub(crate) fn search(
        &self,
        query: &str,
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<SearchHit>, KbError> {
        let vector = match mode {
            SearchMode::Keyword => Vec::new(),
            _ => self.embedder.embed_one(query)?,
        };
        self.search_with_vector(query, &vector, k, mode)
    }

    /// Searches with a query vector computed by the caller (the agent embeds each turn once);
    /// `query_text` feeds the keyword side. `query_vector` is ignored in keyword mode.
    pub(crate) fn search_with_vector(
        &self,
        query_text: &str,
        query_vector: &[f32],
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<SearchHit>, KbError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let k = k.min(MAX_K);
        let depth = (k * 4).max(40);
        let vector_ids: Vec<(u64, f64)> = if mode == SearchMode::Keyword {
            Vec::new()
        } else {
            self.sync_index(true)?;
            let guard = self.index.read().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                Some(idx) => idx
                    .search(query_vector, depth)?
                    .into_iter()
                    .map(|(id, s)| (id, s as f64))
                    .collect(),
                None => Vec::new(),
            }
        };
        let keyword_ids: Vec<(u64, f64)> = if mode == SearchMode::Vector {
            Vec::new()
        } else {
            self.keyword_search(query_text, depth)?
        };
        let ranked: Vec<(u64, f64, Option<usize>, Option<usize>)> = match mode {
            SearchMode::Vector => vector_ids
                .iter()
                .enumerate()
                .map(|(i, &(id, s))| (id, s, Some(i + 1), None))
                .collect(),
            SearchMode::Keyword => keyword_ids
                .iter()
                .enumerate()
                .map(|(i, &(id, s))| (id, s, None, Some(i + 1)))
                .collect(),
            SearchMode::Hybrid => {
                let v: Vec<u64> = vector_ids.iter().map(|x| x.0).collect();
                let kw: Vec<u64> = keyword_ids.iter().map(|x| x.0).collect();
                rrf(&v, &kw)
                    .into_iter()
                    .map(|f| (f.id, f.score, f.vector_rank, f.keyword_rank))
                    .collect()
            }
        };
        // Rows can vanish under a concurrent ingestion: fetch a little more than k.
        let wanted: Vec<u64> = ranked.iter().take(k * 2).map(|r| r.0).collect();
        let rows = self.store().chunks(&wanted)?;
        let mut hits = Vec::with_capacity(k);
        for (id, score, vector_rank, keyword_rank) in ranked {
            if hits.len() == k {
                break;
            }
            let Some(row) = rows.get(&id) else { continue };
            hits.push(SearchHit {
                chunk_id: id,
                source: row.source.clone(),
                heading: row.heading.clone(),
                text: row.text.clone(),
                score,
                vector_rank,
                keyword_rank,
                line_start: row.line_start,
                line_end: row.line_end,
                metadata: row.metadata.clone(),
            });
        }
        Ok(hits)
    }

    /// The keyword leg: FTS5 BM25 over a plan that bounds the rows BM25 has to score (see
    /// [`fts::plan`]); exact rare tokens such as `pay_ABC123` always stay in the query.
    fn keyword_search(&self, query_text: &str, depth: usize) -> Result<Vec<(u64, f64)>, KbError> {
        let terms = fts::terms(query_text);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let budget = self.options.keyword_budget.max(1);
        let mut store = self.store();
        let mut dfs = Vec::with_capacity(terms.len());
        for t in terms {
            let df = store.capped_df(&t, budget)?;
            dfs.push((t, df));
        }
        match fts::plan(&dfs, budget) {
            KeywordPlan::Nothing => Ok(Vec::new()),
            KeywordPlan::Or(chosen) => store.fts_search(&chosen.join(" OR "), depth),
            KeywordPlan::Common(all) => {
                let conjunction = all.join(" AND ");
                let expr = if store.capped_count(&conjunction, 0)? > 0 {
                    conjunction
                } else {
                    all[0].clone()
                };
                store.fts_search_recent(&expr, depth, budget)
            }
        }
    }
}

impl KnowledgeBase {
    /// Searches for `query`, embedding it when the mode needs a vector.
    pub fn search(
        &self,
        query: &str,
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<SearchHit>, KbError> {
        self.core().search(query, k, mode)
    }

    /// Searches with a query vector computed by the caller (the agent embeds each turn once);
    /// `query_text` feeds the keyword side. `query_vector` is ignored in keyword mode.
    pub fn search_with_vector(
        &self,
        query_text: &str,
        query_vector: &[f32],
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<SearchHit>, KbError> {
        self.core()
            .search_with_vector(query_text, query_vector, k, mode)
    }
}
