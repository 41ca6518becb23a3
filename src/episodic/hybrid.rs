//! The in-process hybrid index both backends search: one per merchant, built from that
//! merchant's rows and cached until the merchant's version counter moves.
//!
//! A search runs two legs over the merchant's episodes only — exact cosine over the stored unit
//! embeddings, and Okapi BM25 over the summaries' tokens — and fuses their rankings with
//! weighted reciprocal-rank fusion (see [`Fusion`]). Both backends share this code, so a query
//! ranks the same on SQLite and on Redis.

use std::collections::HashMap;
use std::sync::Arc;

use super::words::{query_tokens, tokens};
use super::{hints, EpisodicError};

/// How the two legs of a hybrid search are combined. The defaults were chosen on the LoCoMo
/// conversations (see `BENCHMARKS.md`, "Episode retrieval on LoCoMo").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fusion {
    /// Weight of the dense (embedding) leg in the reciprocal-rank sum.
    pub dense_weight: f32,
    /// Weight of the keyword (BM25) leg.
    pub keyword_weight: f32,
    /// The `c` of `1 / (c + rank)`.
    pub rrf_c: f32,
    /// BM25 term-frequency saturation.
    pub bm25_k1: f32,
    /// BM25 length normalisation.
    pub bm25_b: f32,
    /// How many of each leg's best hits take part in the fusion (at least `k`).
    pub depth: usize,
    /// Share of each neighbouring episode's keyword score added to an episode's own, for
    /// neighbours in save order that share its `occurred_at` (turns of one session).
    pub keyword_neighbours: f32,
    /// The same for the dense leg.
    pub dense_neighbours: f32,
    /// Prefer the episodes that match the query's hints (the one speaker it names, the date it
    /// gives; see [`date_span`](super::date_span) and
    /// [`dense_query_text`](super::dense_query_text)): each leg ranks them among themselves at
    /// full weight, the others among themselves at `outside_hints`.
    pub hints: bool,
    /// With hints: the weight of the episodes that do not match them, fused among themselves
    /// (0: they only follow the matching ones). Above 0 a strong outside episode can still
    /// rank above a weak matching one.
    pub outside_hints: f32,
    /// Weight of the session prior: every episode of a session (two or more episodes with
    /// one `occurred_at`) gains `session_weight / (rrf_c + rank)`, where `rank` is its
    /// session's BM25 rank over the whole session's words.
    pub session_weight: f32,
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion {
            dense_weight: 0.7,
            keyword_weight: 1.0,
            rrf_c: 3.0,
            bm25_k1: 1.2,
            bm25_b: 0.75,
            depth: 100,
            keyword_neighbours: 0.5,
            dense_neighbours: 0.0,
            hints: true,
            outside_hints: 0.3,
            session_weight: 0.3,
        }
    }
}

/// One query of [`EpisodicStore::search`](super::EpisodicStore::search).
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// The query text, for the keyword leg (may be empty when `vector` is given).
    pub text: String,
    /// The query's embedding, for the dense leg (same model as the episodes'), if any.
    pub vector: Option<Vec<f32>>,
    /// Number of episodes to return.
    pub k: usize,
    /// How the legs are combined.
    pub fusion: Fusion,
}

impl SearchQuery {
    /// A query with text, embedding and the default fusion.
    pub fn new(text: impl Into<String>, vector: Option<Vec<f32>>, k: usize) -> SearchQuery {
        SearchQuery {
            text: text.into(),
            vector,
            k,
            fusion: Fusion::default(),
        }
    }
}

/// One row the index is built from.
pub(crate) struct IndexRow<K> {
    pub key: K,
    pub id: String,
    pub created_us: i64,
    /// `occurred_at` if known, else `created_at`: neighbours with equal values are one session.
    pub when_us: i64,
    pub summary: String,
    pub embedding: Option<Vec<u8>>,
    /// `metadata.speaker`, if a string.
    pub speaker: Option<String>,
}

/// The searchable form of one merchant's episodes at one version.
pub(crate) struct MerchantIndex<K> {
    version: i64,
    keys: Vec<K>,
    created_us: Vec<i64>,
    when_us: Vec<i64>,
    dim: usize,
    /// Row-major unit vectors; rows without an embedding are zero and flagged in `has_vec`.
    vectors: Vec<f32>,
    has_vec: Vec<bool>,
    vocab: HashMap<String, u32>,
    /// Per term: (document, term frequency).
    postings: Vec<Vec<(u32, u32)>>,
    doc_len: Vec<u32>,
    avg_len: f32,
    /// Distinct speakers, in first-seen order.
    speakers: Vec<String>,
    /// Per episode: index into `speakers`, or `NO_SPEAKER`.
    speaker_of: Vec<u32>,
    /// The words queries name the speakers by.
    call_names: hints::CallNames,
    /// The sessions: groups of two or more episodes with one `when_us`, as BM25 documents.
    sessions: Sessions,
}

/// Sessions as BM25 documents: each the words of all its episodes, over the episodes'
/// vocabulary.
#[derive(Default)]
struct Sessions {
    /// Per episode: its session, or `NO_SESSION`.
    of_doc: Vec<u32>,
    /// Per term id: (session, term frequency).
    postings: Vec<Vec<(u32, u32)>>,
    /// Words per session.
    len: Vec<u32>,
    avg_len: f32,
}

const NO_SESSION: u32 = u32::MAX;

const NO_SPEAKER: u32 = u32::MAX;
/// Longer `metadata.speaker` values are not speaker names and are ignored.
const MAX_SPEAKER_BYTES: usize = 256;

impl<K: Clone> MerchantIndex<K> {
    /// Builds the index of `rows` at `version`. Fails if embeddings differ in dimension.
    pub fn build(version: i64, rows: Vec<IndexRow<K>>) -> Result<Self, EpisodicError> {
        let n = rows.len();
        let dim = rows
            .iter()
            .find_map(|r| r.embedding.as_ref().map(|e| e.len() / 4))
            .unwrap_or(0);
        let mut idx = MerchantIndex {
            version,
            keys: Vec::with_capacity(n),
            created_us: Vec::with_capacity(n),
            when_us: Vec::with_capacity(n),
            dim,
            vectors: vec![0.0; n * dim],
            has_vec: vec![false; n],
            vocab: HashMap::new(),
            postings: Vec::new(),
            doc_len: Vec::with_capacity(n),
            avg_len: 0.0,
            speakers: Vec::new(),
            speaker_of: Vec::with_capacity(n),
            call_names: hints::CallNames::default(),
            sessions: Sessions::default(),
        };
        let mut speaker_ids: HashMap<String, u32> = HashMap::new();
        let mut total_len = 0u64;
        let mut tf: HashMap<u32, u32> = HashMap::new();
        for (doc, row) in rows.into_iter().enumerate() {
            if let Some(bytes) = &row.embedding {
                if bytes.len() % 4 != 0 || bytes.len() / 4 != dim {
                    return Err(EpisodicError::DimensionMismatch {
                        id: row.id,
                        expected: dim,
                        found: bytes.len() / 4,
                    });
                }
                let dst = &mut idx.vectors[doc * dim..(doc + 1) * dim];
                for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                idx.has_vec[doc] = true;
            }
            tf.clear();
            let mut len = 0u32;
            for tok in tokens(&row.summary) {
                len += 1;
                let next = idx.vocab.len() as u32;
                let term = *idx.vocab.entry(tok).or_insert(next);
                if term as usize == idx.postings.len() {
                    idx.postings.push(Vec::new());
                }
                *tf.entry(term).or_insert(0) += 1;
            }
            for (&term, &f) in &tf {
                idx.postings[term as usize].push((doc as u32, f));
            }
            total_len += u64::from(len);
            let speaker = match row.speaker {
                Some(name) if !name.trim().is_empty() && name.len() <= MAX_SPEAKER_BYTES => {
                    let next = idx.speakers.len() as u32;
                    *speaker_ids.entry(name).or_insert_with_key(|name| {
                        idx.speakers.push(name.clone());
                        next
                    })
                }
                _ => NO_SPEAKER,
            };
            idx.speaker_of.push(speaker);
            idx.doc_len.push(len);
            idx.keys.push(row.key);
            idx.created_us.push(row.created_us);
            idx.when_us.push(row.when_us);
        }
        idx.avg_len = if n == 0 {
            0.0
        } else {
            (total_len as f32 / n as f32).max(1.0)
        };
        idx.sessions = Sessions::build(&idx.when_us, &idx.postings, &idx.doc_len);
        idx.call_names = hints::CallNames::of(&idx.speakers);
        Ok(idx)
    }

    /// The best `k` episodes, best first, with their fused scores scaled to `[0, 1]` (1 = first
    /// in every leg); ties go to the newer episode. `vector` must already be unit length.
    ///
    /// With `f.hints`, the episodes that match the query's hints (by the one speaker it names,
    /// in the date span it gives; see [`hints`](super::hints)) are preferred: each leg ranks
    /// them among themselves at full weight and the rest among themselves at
    /// `f.outside_hints` (with 0, the rest only follow, scores no higher than the last
    /// matching one). A hint that no episode matches is ignored.
    pub fn search(
        &self,
        text: &str,
        vector: Option<&[f32]>,
        k: usize,
        f: &Fusion,
    ) -> Result<Vec<(K, f32)>, EpisodicError> {
        if k == 0 || self.keys.is_empty() {
            return Ok(Vec::new());
        }
        let depth = f.depth.max(k);
        // The best possible fused score (first in every leg used), to scale scores into [0, 1].
        let mut best_possible = f.keyword_weight / (f.rrf_c + 1.0);
        let mut dense = None;
        if let Some(q) = vector {
            if self.dim != 0 && q.len() != self.dim {
                return Err(EpisodicError::DimensionMismatch {
                    id: "(index)".into(),
                    expected: q.len(),
                    found: self.dim,
                });
            }
            if self.dim != 0 {
                best_possible += f.dense_weight / (f.rrf_c + 1.0);
                dense = Some(self.smooth(self.dense(q), f.dense_neighbours));
            }
        }
        let terms = self.query_terms(text);
        let kw = self.smooth(self.bm25(&terms, f), f.keyword_neighbours);
        let sessions = f.session_weight > 0.0 && !self.sessions.len.is_empty();
        if sessions {
            best_possible += f.session_weight / (f.rrf_c + 1.0);
        }
        let scale = if best_possible > 0.0 {
            1.0 / best_possible
        } else {
            1.0
        };
        let dense = dense.as_deref();
        let preferred = if f.hints { self.preferred(text) } else { None };
        let mut fused = match &preferred {
            None => self.fuse(dense, &kw, |_| true, depth, f),
            Some(mask) => {
                let mut inside = self.fuse(dense, &kw, |d| mask[d as usize], depth, f);
                if f.outside_hints > 0.0 {
                    let outside = self.fuse(dense, &kw, |d| !mask[d as usize], depth, f);
                    for (doc, s) in outside {
                        *inside.entry(doc).or_insert(0.0) += f.outside_hints * s;
                    }
                }
                inside
            }
        };
        if sessions {
            self.add_session_prior(&mut fused, &terms, f);
        }
        let mut ranked = self.best(fused, k);
        if let Some(mask) = &preferred {
            if ranked.len() < k && f.outside_hints <= 0.0 {
                // The matching episodes first; the rest follow, scores kept at or below the
                // last matching one.
                let mut rest = self.fuse(dense, &kw, |d| !mask[d as usize], depth, f);
                if sessions {
                    self.add_session_prior(&mut rest, &terms, f);
                }
                let rest = self.best(rest, k - ranked.len());
                let ceiling = ranked.last().map_or(f32::INFINITY, |&(_, s)| s);
                let top = rest.first().map_or(0.0, |&(_, s)| s);
                let factor = if top > ceiling && top > 0.0 {
                    ceiling / top
                } else {
                    1.0
                };
                ranked.extend(rest.into_iter().map(|(doc, s)| (doc, s * factor)));
            }
        }
        Ok(ranked
            .into_iter()
            .map(|(doc, s)| (self.keys[doc as usize].clone(), (s * scale).min(1.0)))
            .collect())
    }

    /// Weighted reciprocal-rank fusion of the two legs over the episodes `keep` admits (each
    /// leg ranked among those episodes only), unscaled.
    fn fuse(
        &self,
        dense: Option<&[(u32, f32)]>,
        kw: &[(u32, f32)],
        keep: impl Fn(u32) -> bool,
        depth: usize,
        f: &Fusion,
    ) -> HashMap<u32, f32> {
        let mut fused: HashMap<u32, f32> = HashMap::new();
        let admitted = |scored: &[(u32, f32)]| -> Vec<(u32, f32)> {
            scored.iter().copied().filter(|&(d, _)| keep(d)).collect()
        };
        if let Some(dense) = dense {
            for (rank, (doc, _)) in self.top(admitted(dense), depth).into_iter().enumerate() {
                *fused.entry(doc).or_insert(0.0) += f.dense_weight / (f.rrf_c + rank as f32 + 1.0);
            }
        }
        for (rank, (doc, _)) in self.top(admitted(kw), depth).into_iter().enumerate() {
            *fused.entry(doc).or_insert(0.0) += f.keyword_weight / (f.rrf_c + rank as f32 + 1.0);
        }
        fused
    }

    /// The best `k` of `fused`, best first (ties: newer first).
    fn best(&self, fused: HashMap<u32, f32>, k: usize) -> Vec<(u32, f32)> {
        let mut all: Vec<(u32, f32)> = fused.into_iter().collect();
        all.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then(self.created_us[b.0 as usize].cmp(&self.created_us[a.0 as usize]))
        });
        all.truncate(k);
        all
    }

    /// Which episodes match `text`'s hints, or `None` when no hint applies: those of the one
    /// speaker the text names, narrowed to the date span it gives when any of them falls in
    /// it (or all episodes in that span when no single speaker is named).
    fn preferred(&self, text: &str) -> Option<Vec<bool>> {
        let mut mask: Option<Vec<bool>> = None;
        if let [one] = self.call_names.named_in(text)[..] {
            mask = Some(self.speaker_of.iter().map(|&s| s == one).collect());
        }
        if let Some((lo, hi)) = hints::date_span_us(text) {
            let narrowed: Vec<bool> = self
                .when_us
                .iter()
                .enumerate()
                .map(|(i, w)| (lo..=hi).contains(w) && mask.as_ref().is_none_or(|m| m[i]))
                .collect();
            if narrowed.contains(&true) {
                mask = Some(narrowed);
            }
        }
        mask.filter(|m| m.contains(&true) && m.contains(&false))
    }

    /// The distinct speakers (`metadata.speaker`) of the merchant's episodes.
    pub fn speakers(&self) -> &[String] {
        &self.speakers
    }

    /// Adds `beta` times the scores of the previous and next episode (in save order) of the
    /// same session (equal `when_us`) to each episode's score.
    fn smooth(&self, scored: Vec<(u32, f32)>, beta: f32) -> Vec<(u32, f32)> {
        if beta == 0.0 {
            return scored;
        }
        let n = self.keys.len();
        let mut own = vec![0f32; n];
        let mut present = vec![false; n];
        for &(doc, s) in &scored {
            own[doc as usize] = s;
            present[doc as usize] = true;
        }
        let mut out = Vec::with_capacity(scored.len() * 3);
        for i in 0..n {
            let mut s = own[i];
            let mut any = present[i];
            if i > 0 && present[i - 1] && self.when_us[i - 1] == self.when_us[i] {
                s += beta * own[i - 1];
                any = true;
            }
            if i + 1 < n && present[i + 1] && self.when_us[i + 1] == self.when_us[i] {
                s += beta * own[i + 1];
                any = true;
            }
            if any {
                out.push((i as u32, s));
            }
        }
        out
    }

    /// Cosine of every embedded episode with unit `q`.
    fn dense(&self, q: &[f32]) -> Vec<(u32, f32)> {
        let mut out = Vec::with_capacity(self.keys.len());
        for (doc, row) in self.vectors.chunks_exact(self.dim).enumerate() {
            if self.has_vec[doc] {
                out.push((doc as u32, dot(row, q)));
            }
        }
        out
    }

    /// BM25 score of every episode sharing a token with the query.
    fn bm25(&self, terms: &[u32], f: &Fusion) -> Vec<(u32, f32)> {
        bm25(terms, &self.postings, &self.doc_len, self.avg_len, f)
    }

    /// The vocabulary ids of `text`'s query tokens, each once, in first-seen order.
    fn query_terms(&self, text: &str) -> Vec<u32> {
        let mut seen = std::collections::HashSet::new();
        query_tokens(text)
            .filter_map(|tok| self.vocab.get(&tok).copied())
            .filter(|term| seen.insert(*term))
            .collect()
    }

    /// Adds the session prior to every episode in `fused` whose session matches `terms`.
    fn add_session_prior(&self, fused: &mut HashMap<u32, f32>, terms: &[u32], f: &Fusion) {
        let ss = &self.sessions;
        if f.session_weight == 0.0 || ss.len.is_empty() {
            return;
        }
        let mut scored = bm25(terms, &ss.postings, &ss.len, ss.avg_len, f);
        // Best first; ties: the later session (higher id: sessions are numbered in save order).
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
        let mut rank_of = vec![u32::MAX; ss.len.len()];
        for (rank, &(session, _)) in scored.iter().enumerate() {
            rank_of[session as usize] = rank as u32;
        }
        for (&doc, score) in fused.iter_mut() {
            let session = ss.of_doc[doc as usize];
            if session == NO_SESSION {
                continue;
            }
            let rank = rank_of[session as usize];
            if rank != u32::MAX {
                *score += f.session_weight / (f.rrf_c + rank as f32 + 1.0);
            }
        }
    }

    /// The `depth` best of `scored`, best first (ties: newer first).
    fn top(&self, mut scored: Vec<(u32, f32)>, depth: usize) -> Vec<(u32, f32)> {
        let cmp = |a: &(u32, f32), b: &(u32, f32)| {
            b.1.total_cmp(&a.1)
                .then(self.created_us[b.0 as usize].cmp(&self.created_us[a.0 as usize]))
        };
        if scored.len() > depth {
            scored.select_nth_unstable_by(depth, cmp);
            scored.truncate(depth);
        }
        scored.sort_by(cmp);
        scored
    }
}

/// Okapi BM25 of every document sharing a term with `terms`, over `postings` (per term:
/// document, term frequency) of documents `doc_len` words long.
fn bm25(
    terms: &[u32],
    postings: &[Vec<(u32, u32)>],
    doc_len: &[u32],
    avg_len: f32,
    f: &Fusion,
) -> Vec<(u32, f32)> {
    let n = doc_len.len() as f32;
    // Scores accumulate in a dense array indexed by document (a common term's posting can
    // cover most of the merchant's episodes; a hash map per hit cost more than the scoring);
    // `touched` lists the documents scored, in first-seen order.
    let mut scores = vec![0f32; doc_len.len()];
    let mut hit = vec![false; doc_len.len()];
    let mut touched: Vec<u32> = Vec::new();
    for &term in terms {
        let Some(posting) = postings.get(term as usize) else {
            continue;
        };
        let df = posting.len() as f32;
        let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
        for &(doc, tf) in posting {
            let tf = tf as f32;
            let norm =
                f.bm25_k1 * (1.0 - f.bm25_b + f.bm25_b * doc_len[doc as usize] as f32 / avg_len);
            if !hit[doc as usize] {
                hit[doc as usize] = true;
                touched.push(doc);
            }
            scores[doc as usize] += idf * tf * (f.bm25_k1 + 1.0) / (tf + norm);
        }
    }
    touched
        .into_iter()
        .map(|doc| (doc, scores[doc as usize]))
        .collect()
}

impl Sessions {
    /// Groups the episodes with equal `when_us` (two or more) into sessions, numbered by their
    /// first episode, and sums their postings.
    fn build(when_us: &[i64], postings: &[Vec<(u32, u32)>], doc_len: &[u32]) -> Sessions {
        let mut members: HashMap<i64, u32> = HashMap::new();
        for w in when_us {
            *members.entry(*w).or_insert(0) += 1;
        }
        let mut id_of: HashMap<i64, u32> = HashMap::new();
        let mut of_doc = Vec::with_capacity(when_us.len());
        let mut len: Vec<u32> = Vec::new();
        for (doc, w) in when_us.iter().enumerate() {
            if members.get(w).copied().unwrap_or(0) < 2 {
                of_doc.push(NO_SESSION);
                continue;
            }
            let next = len.len() as u32;
            let id = *id_of.entry(*w).or_insert_with(|| {
                len.push(0);
                next
            });
            len[id as usize] += doc_len[doc];
            of_doc.push(id);
        }
        if len.is_empty() {
            return Sessions {
                of_doc,
                ..Sessions::default()
            };
        }
        let mut session_postings = Vec::with_capacity(postings.len());
        let mut sum: HashMap<u32, u32> = HashMap::new();
        for posting in postings {
            sum.clear();
            for &(doc, tf) in posting {
                let s = of_doc[doc as usize];
                if s != NO_SESSION {
                    *sum.entry(s).or_insert(0) += tf;
                }
            }
            let mut p: Vec<(u32, u32)> = sum.iter().map(|(&s, &tf)| (s, tf)).collect();
            p.sort_unstable();
            session_postings.push(p);
        }
        let total: u64 = len.iter().map(|&l| u64::from(l)).sum();
        let avg_len = (total as f32 / len.len() as f32).max(1.0);
        Sessions {
            of_doc,
            postings: session_postings,
            len,
            avg_len,
        }
    }

    fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.of_doc.len() * size_of::<u32>()
            + self.len.len() * size_of::<u32>()
            + self
                .postings
                .iter()
                .map(|p| p.len() * size_of::<(u32, u32)>() + size_of::<Vec<(u32, u32)>>() + 16)
                .sum::<usize>()
    }
}

/// Dot product of two equal-length rows, summed in eight independent lanes so the compiler
/// can keep them in one SIMD register (a single running sum is a serial chain of adds).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Default byte budget of one store's search-index cache (`--episodic-cache-mb`).
pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// Most merchants' indexes one store's cache holds, whatever their size.
pub(crate) const CACHE_ENTRIES: usize = 256;

/// Heap bytes a cache key type owns beyond its inline size (for the byte estimate).
pub(crate) trait HeapSize {
    /// Bytes on the heap.
    fn heap_bytes(&self) -> usize;
}

impl HeapSize for i64 {
    fn heap_bytes(&self) -> usize {
        0
    }
}

impl HeapSize for String {
    fn heap_bytes(&self) -> usize {
        self.capacity()
    }
}

impl<K: HeapSize> MerchantIndex<K> {
    /// Estimated bytes this index holds (vectors, postings, vocabulary, per-row arrays),
    /// counting containers by length plus a fixed overhead per heap allocation.
    pub fn estimated_bytes(&self) -> u64 {
        use std::mem::size_of;
        const ALLOC: usize = 16;
        let n = self.keys.len();
        let keys: usize = self
            .keys
            .iter()
            .map(|k| size_of::<K>() + k.heap_bytes())
            .sum();
        let rows = n * (2 * size_of::<i64>() + size_of::<bool>() + 2 * size_of::<u32>());
        let speakers: usize = self
            .speakers
            .iter()
            .map(|s| s.capacity() + size_of::<String>() + ALLOC)
            .sum::<usize>()
            + self.call_names.heap_bytes();
        let vectors = self.vectors.len() * size_of::<f32>();
        let vocab: usize = self
            .vocab
            .keys()
            .map(|t| t.capacity() + size_of::<String>() + size_of::<u32>() + ALLOC)
            .sum();
        let postings: usize = self
            .postings
            .iter()
            .map(|p| p.len() * size_of::<(u32, u32)>() + size_of::<Vec<(u32, u32)>>() + ALLOC)
            .sum();
        let total = size_of::<Self>()
            + keys
            + rows
            + vectors
            + vocab
            + postings
            + speakers
            + self.sessions.heap_bytes()
            + 12 * ALLOC;
        u64::try_from(total).unwrap_or(u64::MAX)
    }
}

/// Per-merchant cache of built indexes, shared by one store's clones, bounded both by
/// entries and by estimated bytes (least recently used out first). Each entry weighs its
/// [`MerchantIndex::estimated_bytes`], but at least `max_bytes / max_entries`, so neither
/// bound can be exceeded. An index larger than the whole budget is not kept (each search of
/// that merchant rebuilds it).
pub(crate) struct IndexCache<K> {
    cache: moka::sync::Cache<String, Arc<MerchantIndex<K>>>,
}

impl<K: HeapSize + Send + Sync + 'static> IndexCache<K> {
    /// A cache of at most `max_entries` merchants' indexes and about `max_bytes` bytes.
    pub fn new(max_entries: usize, max_bytes: u64) -> Self {
        let budget = max_bytes.max(1);
        let floor = (budget / u64::try_from(max_entries.max(1)).unwrap_or(u64::MAX)).max(1);
        let cache = moka::sync::Cache::builder()
            .max_capacity(budget)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(move |_: &String, v: &Arc<MerchantIndex<K>>| {
                u32::try_from(v.estimated_bytes().max(floor)).unwrap_or(u32::MAX)
            })
            .build();
        IndexCache { cache }
    }

    /// The cached index of `merchant` if it was built at `version`.
    pub fn get(&self, merchant: &str, version: i64) -> Option<Arc<MerchantIndex<K>>> {
        self.cache.get(merchant).filter(|i| i.version == version)
    }

    /// Caches `index` for `merchant`, evicting the least recently used when over a bound.
    pub fn put(&self, merchant: &str, index: Arc<MerchantIndex<K>>) {
        self.cache.insert(merchant.to_owned(), index);
    }

    /// Applies pending evictions now (moka applies them lazily), then returns the number of
    /// cached indexes and their total weight.
    #[cfg(test)]
    fn settled(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lane_dot_product_equals_the_plain_sum() {
        for len in [0usize, 1, 7, 8, 9, 17, 384] {
            let a: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..len)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0)
                .collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
            assert!((f64::from(dot(&a, &b)) - plain).abs() < 1e-4, "len {len}");
        }
    }

    #[test]
    fn a_document_matching_several_query_terms_is_scored_once() {
        let rows = vec![
            row(1, "refund refund delayed payout", None),
            row(2, "payout schedule", None),
            row(3, "unrelated words here", None),
        ];
        let idx = MerchantIndex::build(1, rows).expect("builds");
        let terms = idx.query_terms("refund payout delayed");
        let scored = idx.bm25(&terms, &Fusion::default());
        let mut docs: Vec<u32> = scored.iter().map(|(d, _)| *d).collect();
        docs.sort_unstable();
        assert_eq!(docs, vec![0, 1]);
        let first = scored.iter().find(|(d, _)| *d == 0).map(|(_, s)| *s);
        let second = scored.iter().find(|(d, _)| *d == 1).map(|(_, s)| *s);
        assert!(first > second, "{scored:?}");
    }

    fn row(key: u32, summary: &str, v: Option<[f32; 2]>) -> IndexRow<u32> {
        IndexRow {
            key,
            id: key.to_string(),
            created_us: i64::from(key),
            when_us: i64::from(key),
            summary: summary.into(),
            embedding: v.map(|v| super::super::vector::to_bytes(&v)),
            speaker: None,
        }
    }

    /// An episode by `speaker` at `when` (one session per `when`).
    fn said(key: u32, speaker: &str, when: i64, summary: &str) -> IndexRow<u32> {
        IndexRow {
            speaker: Some(speaker.into()),
            when_us: when,
            ..row(key, summary, None)
        }
    }

    /// Microseconds at noon UTC of a day.
    fn day(y: i32, m: u32, d: u32) -> i64 {
        chrono::NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_micros()
    }

    fn keys(hits: &[(u32, f32)]) -> Vec<u32> {
        hits.iter().map(|h| h.0).collect()
    }

    #[test]
    fn the_one_named_speaker_ranks_first_and_the_rest_still_follow() {
        let idx = MerchantIndex::build(
            1,
            vec![
                said(1, "Ana", 1, "the payout to my bank was late again"),
                said(2, "Ben", 2, "my payout arrived late late late"),
                said(3, "Ana", 3, "nothing about money"),
            ],
        )
        .unwrap();
        let f = Fusion::default();
        // Without hints Ben's episode matches "payout late" best.
        let off = Fusion { hints: false, ..f };
        assert_eq!(
            idx.search("Ana payout late", None, 3, &off).unwrap()[0].0,
            2
        );
        // Named, Ana's matching episode comes first; Ben's still follows, its score down to
        // the outside weight; Ana's episode without a query word is not a hit.
        let hits = idx
            .search("What did ana say about the payout late?", None, 3, &f)
            .unwrap();
        assert_eq!(keys(&hits), vec![1, 2], "{hits:?}");
        assert!(hits[1].1 <= f.outside_hints * hits[0].1 + 1e-6, "{hits:?}");
        // Hard preference (outside weight 0): the rest are appended, scores kept in order.
        let hard = Fusion {
            outside_hints: 0.0,
            ..f
        };
        let hits = idx.search("ana payout late", None, 3, &hard).unwrap();
        assert_eq!(keys(&hits), vec![1, 2], "{hits:?}");
        assert!(hits[0].1 >= hits[1].1, "{hits:?}");
        // Both speakers named: no speaker preference.
        assert_eq!(
            idx.search("ana and ben: payout late", None, 1, &f).unwrap()[0].0,
            2
        );
        assert_eq!(idx.speakers(), ["Ana".to_owned(), "Ben".to_owned()]);
    }

    #[test]
    fn a_date_in_the_query_prefers_episodes_of_that_day_month_or_year() {
        let idx = MerchantIndex::build(
            1,
            vec![
                said(1, "Ana", day(2024, 3, 1), "refund for the blue shoes"),
                said(2, "Ana", day(2024, 3, 15), "refund for the red shoes"),
                said(
                    3,
                    "Ana",
                    day(2024, 4, 2),
                    "refund for the shoes, shoes, shoes",
                ),
            ],
        )
        .unwrap();
        let f = Fusion::default();
        assert_eq!(idx.search("shoes refund", None, 1, &f).unwrap()[0].0, 3);
        assert_eq!(
            idx.search("shoes refund on 15 March, 2024", None, 1, &f)
                .unwrap()[0]
                .0,
            2
        );
        assert_eq!(
            idx.search("shoes refund 2024-03-01", None, 1, &f).unwrap()[0].0,
            1
        );
        let march = idx
            .search("shoes refund in March 2024", None, 3, &f)
            .unwrap();
        assert_eq!(
            keys(&march)[..2].iter().filter(|k| **k != 3).count(),
            2,
            "{march:?}"
        );
        // A date no episode falls in is ignored.
        assert_eq!(
            idx.search("shoes refund in 1999", None, 1, &f).unwrap()[0].0,
            3
        );
        // The day span reaches one day either side, and no further.
        let next_day = idx
            .search("shoes refund on 16 March 2024", None, 1, &f)
            .unwrap();
        assert_eq!(next_day[0].0, 2);
        let two_after = idx
            .search("shoes refund on 17 March 2024", None, 1, &f)
            .unwrap();
        assert_eq!(two_after[0].0, 3);
    }

    #[test]
    fn a_session_whose_words_match_lifts_its_episodes() {
        // Two sessions of two turns each; "tampa" and "beach" are said in session B but in
        // different turns, and one turn of session A mentions the beach alone.
        let rows = vec![
            said(1, "Nate", 100, "I went to the beach yesterday"),
            said(2, "Jo", 100, "sounds nice"),
            said(3, "Nate", 200, "we drove down to Tampa"),
            said(4, "Nate", 200, "the beach there was lovely, the beach"),
        ];
        let idx = MerchantIndex::build(1, rows).unwrap();
        let no_prior = Fusion {
            session_weight: 0.0,
            keyword_neighbours: 0.0,
            ..Fusion::default()
        };
        let with_prior = Fusion {
            keyword_neighbours: 0.0,
            ..Fusion::default()
        };
        let q = "which beach in tampa";
        let a = idx.search(q, None, 4, &no_prior).unwrap();
        let b = idx.search(q, None, 4, &with_prior).unwrap();
        // The session that holds both words outranks the lone "beach" turn of the other.
        let pos = |hits: &[(u32, f32)], k: u32| hits.iter().position(|h| h.0 == k).unwrap();
        assert!(pos(&b, 4) < pos(&b, 1), "{b:?}");
        assert!(b.iter().all(|h| h.1 <= 1.0));
        assert_eq!(
            a.len(),
            3,
            "only episodes with a query word are ranked: {a:?}"
        );
        // Episodes with distinct times form no sessions: the prior changes nothing.
        let lone = MerchantIndex::build(
            1,
            vec![
                row(1, "beach", None),
                row(2, "tampa beach", None),
                row(3, "tampa", None),
            ],
        )
        .unwrap();
        assert_eq!(
            lone.search(q, None, 3, &with_prior).unwrap(),
            lone.search(q, None, 3, &no_prior).unwrap()
        );
    }

    fn index_of(words: usize, dim: usize) -> Arc<MerchantIndex<u32>> {
        let rows = (0..words as u32)
            .map(|i| IndexRow {
                key: i,
                id: i.to_string(),
                created_us: i64::from(i),
                when_us: i64::from(i),
                summary: format!("episode w{i} about refunds"),
                embedding: Some(super::super::vector::to_bytes(&vec![0.5f32; dim])),
                speaker: None,
            })
            .collect();
        Arc::new(MerchantIndex::build(1, rows).unwrap())
    }

    impl HeapSize for u32 {
        fn heap_bytes(&self) -> usize {
            0
        }
    }

    #[test]
    fn cache_is_bounded_by_bytes_as_well_as_entries() {
        let idx = index_of(200, 384);
        let one = idx.estimated_bytes();
        // The vectors alone are 200 × 384 × 4 bytes: the estimate covers at least them.
        assert!(one >= 200 * 384 * 4, "{one}");
        // Room for two such indexes by bytes, 100 by entries: the bytes decide.
        let cache = IndexCache::new(100, one * 5 / 2);
        for m in ["m1", "m2", "m3", "m4"] {
            cache.put(m, Arc::clone(&idx));
            cache.settled();
            // Touch m1 after each insert, so it stays the most recently used but one.
            assert!(cache.get("m1", 1).is_some(), "m1 evicted after {m}");
            cache.settled();
        }
        let (entries, weight) = cache.settled();
        assert_eq!(entries, 2, "weight {weight}, one {one}");
        assert!(weight <= one * 5 / 2);
        assert!(cache.get("m4", 1).is_some(), "the newest is kept");
        assert!(
            cache.get("m1", 1).is_some(),
            "the most recently used is kept"
        );
        assert!(cache.get("m2", 1).is_none() && cache.get("m3", 1).is_none());
        // A stale version is a miss.
        assert!(cache.get("m4", 2).is_none());
        // Small indexes: the entry bound decides.
        let small = index_of(2, 4);
        let cache = IndexCache::new(3, 1 << 30);
        for i in 0..10 {
            cache.put(&format!("s{i}"), Arc::clone(&small));
        }
        assert_eq!(cache.settled().0, 3);
    }

    #[test]
    fn keyword_leg_finds_a_rare_token_and_dense_leg_ranks_by_cosine() {
        let idx = MerchantIndex::build(
            1,
            vec![
                row(1, "refund issued for order", Some([1.0, 0.0])),
                row(2, "chargeback ZX-4411 disputed", Some([0.0, 1.0])),
                row(3, "refund pending", Some([0.9, 0.1])),
            ],
        )
        .unwrap();
        let hits = idx
            .search("what about ZX-4411?", None, 1, &Fusion::default())
            .unwrap();
        assert_eq!(hits[0].0, 2);
        let hits = idx
            .search("", Some(&[1.0, 0.0]), 2, &Fusion::default())
            .unwrap();
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!(idx
            .search("", Some(&[1.0, 0.0, 0.0]), 2, &Fusion::default())
            .is_err());
    }
}
