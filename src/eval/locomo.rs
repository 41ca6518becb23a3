//! LoCoMo (Maharana et al., ACL 2024) turn-level retrieval recall for episodic memory.
//!
//! Each conversation becomes one merchant; each dialogue turn one episode whose summary is
//! `"Speaker: text"` (plus ` [shares CAPTION]` for a shared photo), with `metadata.dia_id` the
//! turn id and `occurred_at` its session's date. Every question of categories 1–4 with evidence
//! is searched and scored as the dataset README says (plus any@k and all@k, the share of
//! questions with one or every evidence turn in the top k): recall@k = |evidence ∩ top-k| /
//! |evidence|, evidence split on `;` and stripped, ids that name no turn kept.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use crate::embed::Embedder;
use crate::episodic::{
    dense_query_text, EpisodeDraft, EpisodicError, EpisodicStore, Fusion, SearchQuery,
};
use crate::merchant::MerchantId;

/// What can go wrong in an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The conversation file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a LoCoMo conversation.
    #[error("{path} is not a LoCoMo conversation: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] EpisodicError),
    /// The embedder failed.
    #[error("embedding failed: {0}")]
    Embed(#[from] crate::embed::EmbedError),
}

/// One dialogue turn.
#[derive(Debug, Clone)]
pub struct Turn {
    /// Turn id, e.g. `D1:3`.
    pub dia_id: String,
    /// Who spoke.
    pub speaker: String,
    /// What was said.
    pub text: String,
    /// Caption of a shared photo, if any.
    pub caption: Option<String>,
    /// 1-based session number.
    pub session: usize,
    /// When the session took place, if its date parses.
    pub date: Option<DateTime<Utc>>,
}

impl Turn {
    /// The episode summary: `"Speaker: text"` plus ` [shares CAPTION]` when a photo was shared.
    pub fn summary(&self) -> String {
        match &self.caption {
            Some(c) => format!("{}: {} [shares {}]", self.speaker, self.text, c),
            None => format!("{}: {}", self.speaker, self.text),
        }
    }
}

/// One question with its evidence turn ids (already split and stripped).
#[derive(Debug, Clone)]
pub struct Question {
    /// The question.
    pub question: String,
    /// Evidence turn ids.
    pub evidence: Vec<String>,
    /// LoCoMo category (1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial).
    pub category: u8,
}

/// One conversation.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// File stem, e.g. `26`.
    pub name: String,
    /// Turns in order.
    pub turns: Vec<Turn>,
    /// Questions of categories 1–4 that have evidence.
    pub questions: Vec<Question>,
}

/// Parses a session date such as `"1:56 pm on 8 May, 2023"`.
pub fn parse_session_date(s: &str) -> Option<DateTime<Utc>> {
    let (time, date) = s.split_once(" on ")?;
    let date = NaiveDate::parse_from_str(date.trim(), "%d %B, %Y").ok()?;
    let time = NaiveTime::parse_from_str(&time.trim().to_uppercase(), "%I:%M %p")
        .unwrap_or(NaiveTime::MIN);
    Some(date.and_time(time).and_utc())
}

/// Splits evidence entries on `;`, strips them and drops empty pieces.
pub fn evidence_ids(raw: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in raw {
        let s = match e {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        for piece in s.split(';') {
            let p = piece.trim();
            if !p.is_empty() && !out.iter().any(|o| o == p) {
                out.push(p.to_owned());
            }
        }
    }
    out
}

/// |evidence ∩ retrieved\[..k\]| / |evidence|.
pub fn recall_at(evidence: &[String], retrieved: &[String], k: usize) -> f64 {
    if evidence.is_empty() {
        return 0.0;
    }
    let top: HashSet<&str> = retrieved.iter().take(k).map(String::as_str).collect();
    let hit = evidence.iter().filter(|e| top.contains(e.as_str())).count();
    hit as f64 / evidence.len() as f64
}

/// Whether at least one evidence turn is in `retrieved[..k]` (any@k; false without evidence).
pub fn any_at(evidence: &[String], retrieved: &[String], k: usize) -> bool {
    let top: HashSet<&str> = retrieved.iter().take(k).map(String::as_str).collect();
    evidence.iter().any(|e| top.contains(e.as_str()))
}

/// Whether every evidence turn is in `retrieved[..k]` (all@k; false without evidence).
pub fn all_at(evidence: &[String], retrieved: &[String], k: usize) -> bool {
    let top: HashSet<&str> = retrieved.iter().take(k).map(String::as_str).collect();
    !evidence.is_empty() && evidence.iter().all(|e| top.contains(e.as_str()))
}

/// Scores of a set of questions, each per cut-off k: the mean fraction of evidence turns found
/// (recall@k), and the fraction of questions with at least one (any@k) or every (all@k)
/// evidence turn in the top k.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scores {
    /// Questions scored.
    pub questions: usize,
    /// Mean recall per k.
    pub recall: Vec<f64>,
    /// any@k per k.
    pub any: Vec<f64>,
    /// all@k per k.
    pub all: Vec<f64>,
}

impl Scores {
    fn new(n_k: usize) -> Self {
        Scores {
            questions: 0,
            recall: vec![0.0; n_k],
            any: vec![0.0; n_k],
            all: vec![0.0; n_k],
        }
    }

    fn add(&mut self, evidence: &[String], retrieved: &[String], ks: &[usize]) {
        self.questions += 1;
        for (i, &k) in ks.iter().enumerate() {
            self.recall[i] += recall_at(evidence, retrieved, k);
            self.any[i] += f64::from(u8::from(any_at(evidence, retrieved, k)));
            self.all[i] += f64::from(u8::from(all_at(evidence, retrieved, k)));
        }
    }

    fn finish(&mut self) {
        let n = self.questions.max(1) as f64;
        for v in [&mut self.recall, &mut self.any, &mut self.all] {
            for x in v.iter_mut() {
                *x /= n;
            }
        }
    }
}

impl Conversation {
    /// Loads a LoCoMo conversation file.
    pub fn load(path: &Path) -> Result<Conversation, EvalError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| EvalError::Read {
            path: p.clone(),
            source,
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| EvalError::Format {
            path: p.clone(),
            message: format!("not JSON ({e})"),
        })?;
        let conv = v.get("conversation").unwrap_or(&v);
        let bad = |m: &str| EvalError::Format {
            path: p.clone(),
            message: m.to_owned(),
        };
        let mut turns = Vec::new();
        let mut session = 1;
        loop {
            let key = format!("session_{session}");
            let Some(list) = conv.get(&key) else {
                // Some files list dates for sessions that have no turns; stop at the first gap
                // after the last session with turns.
                if (session + 1..session + 40).any(|s| conv.get(format!("session_{s}")).is_some()) {
                    session += 1;
                    continue;
                }
                break;
            };
            let list = list
                .as_array()
                .ok_or_else(|| bad(&format!("{key} is not a list")))?;
            let date = conv
                .get(format!("{key}_date_time"))
                .and_then(Value::as_str)
                .and_then(parse_session_date);
            for t in list {
                let field = |f: &str| t.get(f).and_then(Value::as_str).map(str::to_owned);
                turns.push(Turn {
                    dia_id: field("dia_id").ok_or_else(|| bad("a turn has no dia_id"))?,
                    speaker: field("speaker").ok_or_else(|| bad("a turn has no speaker"))?,
                    text: field("text").unwrap_or_default(),
                    caption: field("blip_caption"),
                    session,
                    date,
                });
            }
            session += 1;
        }
        if turns.is_empty() {
            return Err(bad("it has no session_N turns"));
        }
        let mut questions = Vec::new();
        for q in v
            .get("qa")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("it has no qa list"))?
        {
            let category = q.get("category").and_then(Value::as_u64).unwrap_or(0) as u8;
            let evidence = evidence_ids(
                q.get("evidence")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]),
            );
            let Some(question) = q.get("question").and_then(Value::as_str) else {
                continue;
            };
            if (1..=4).contains(&category) && !evidence.is_empty() {
                questions.push(Question {
                    question: question.to_owned(),
                    evidence,
                    category,
                });
            }
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "conversation".into());
        Ok(Conversation {
            name,
            turns,
            questions,
        })
    }
}

/// How episodes are built and searched.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// Cut-offs to report.
    pub ks: Vec<usize>,
    /// Turns before each turn included in the text that is embedded (0 = the turn alone).
    pub context_before: usize,
    /// Turns after each turn included in the text that is embedded.
    pub context_after: usize,
    /// Fusion parameters of the search.
    pub fusion: Fusion,
    /// Keep each question's retrieved ids in the report.
    pub details: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            ks: vec![1, 5, 10, 20],
            context_before: 2,
            context_after: 0,
            fusion: Fusion::default(),
            details: false,
        }
    }
}

/// The text embedded for turn `i`: its summary, preceded by up to `before` and followed by up
/// to `after` neighbouring turns of the same session.
pub fn embedded_text(turns: &[Turn], i: usize, before: usize, after: usize) -> String {
    let t = &turns[i];
    let mut parts = Vec::new();
    let start = i.saturating_sub(before);
    for n in &turns[start..i] {
        if n.session == t.session {
            parts.push(n.summary());
        }
    }
    parts.push(t.summary());
    for n in turns.iter().skip(i + 1).take(after) {
        if n.session == t.session {
            parts.push(n.summary());
        }
    }
    parts.join("\n")
}

/// Per-question outcome, kept with `details`.
#[derive(Debug, Clone, Serialize)]
pub struct QuestionResult {
    /// Conversation name.
    pub conversation: String,
    /// Category.
    pub category: u8,
    /// The question.
    pub question: String,
    /// Evidence ids.
    pub evidence: Vec<String>,
    /// Retrieved dia_ids, best first (as many as the largest k).
    pub retrieved: Vec<String>,
}

/// The outcome of [`run`].
#[derive(Debug, Clone)]
pub struct Report {
    /// Cut-offs.
    pub ks: Vec<usize>,
    /// Episodes imported.
    pub episodes: usize,
    /// Questions asked.
    pub questions: usize,
    /// Mean recall per k.
    pub recall: Vec<f64>,
    /// any@k per k: questions with at least one evidence turn in the top k.
    pub any: Vec<f64>,
    /// all@k per k: questions with every evidence turn in the top k.
    pub all: Vec<f64>,
    /// Per category.
    pub per_category: BTreeMap<u8, Scores>,
    /// Search latency percentiles in milliseconds (p50, p99), query embedding excluded.
    pub latency_ms: (f64, f64),
    /// Episodes per second for embedding + storing.
    pub import_per_sec: f64,
    /// Per-question results (with `details`).
    pub details: Vec<QuestionResult>,
}

impl Report {
    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let by_k = |v: &[f64]| -> Value {
            Value::Object(
                self.ks
                    .iter()
                    .zip(v)
                    .map(|(k, r)| (k.to_string(), json!(r)))
                    .collect(),
            )
        };
        let per_cat: serde_json::Map<String, Value> = self
            .per_category
            .iter()
            .map(|(c, sc)| {
                (
                    c.to_string(),
                    json!({"questions": sc.questions, "recall": by_k(&sc.recall),
                           "any": by_k(&sc.any), "all": by_k(&sc.all)}),
                )
            })
            .collect();
        let mut out = json!({
            "episodes": self.episodes,
            "questions": self.questions,
            "k": self.ks,
            "recall": by_k(&self.recall),
            "any": by_k(&self.any),
            "all": by_k(&self.all),
            "per_category": per_cat,
            "latency_ms": {"p50": self.latency_ms.0, "p99": self.latency_ms.1},
            "import_per_sec": self.import_per_sec,
        });
        if !self.details.is_empty() {
            out["details"] = json!(self.details);
        }
        out
    }
}

/// Imports every conversation into `store` (merchant `prefix` + name) and asks its questions.
pub async fn run(
    store: &dyn EpisodicStore,
    embedder: &dyn Embedder,
    conversations: &[Conversation],
    prefix: &str,
    cfg: &EvalConfig,
) -> Result<Report, EvalError> {
    let max_k = cfg.ks.iter().copied().max().unwrap_or(10).max(1);
    let mut episodes = 0usize;
    let mut import_secs = 0f64;
    let mut latencies = Vec::new();
    let mut overall = Scores::new(cfg.ks.len());
    let mut per_category: BTreeMap<u8, Scores> = BTreeMap::new();
    let mut details = Vec::new();
    let mut questions = 0usize;
    for conv in conversations {
        let merchant =
            MerchantId::parse(&format!("{prefix}{}", sanitize(&conv.name))).map_err(|e| {
                EvalError::Format {
                    path: conv.name.clone(),
                    message: e.to_string(),
                }
            })?;
        store.forget(&merchant).await?;
        let started = Instant::now();
        for chunk_start in (0..conv.turns.len()).step_by(64) {
            let end = (chunk_start + 64).min(conv.turns.len());
            let texts: Vec<String> = (chunk_start..end)
                .map(|i| embedded_text(&conv.turns, i, cfg.context_before, cfg.context_after))
                .collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let vectors = embedder.embed(&refs)?;
            let drafts = conv.turns[chunk_start..end]
                .iter()
                .zip(vectors)
                .map(|(t, v)| {
                    let mut d = EpisodeDraft::new(t.summary())
                        .with_metadata(
                            json!({"dia_id": t.dia_id, "session": t.session, "speaker": t.speaker}),
                        )
                        .with_embedding(v)
                        .with_key(format!("locomo:{}", t.dia_id));
                    d.occurred_at = t.date;
                    d
                })
                .collect();
            store.save_many(&merchant, drafts).await?;
        }
        import_secs += started.elapsed().as_secs_f64();
        episodes += conv.turns.len();

        // Questions are embedded as every caller embeds a query: without speaker names.
        let speakers = store.speakers(&merchant).await?;
        let dense: Vec<String> = conv
            .questions
            .iter()
            .map(|q| {
                if cfg.fusion.hints {
                    dense_query_text(&q.question, &speakers)
                } else {
                    q.question.clone()
                }
            })
            .collect();
        let texts: Vec<&str> = dense.iter().map(String::as_str).collect();
        let mut vectors = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(64) {
            vectors.extend(embedder.embed(chunk)?);
        }
        for (q, v) in conv.questions.iter().zip(vectors) {
            let query = SearchQuery {
                text: q.question.clone(),
                vector: Some(v),
                k: max_k,
                fusion: cfg.fusion,
            };
            let t0 = Instant::now();
            let hits = store.search(&merchant, &query).await?;
            latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
            let retrieved: Vec<String> = hits
                .iter()
                .filter_map(|h| h.episode.metadata.get("dia_id").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            per_category
                .entry(q.category)
                .or_insert_with(|| Scores::new(cfg.ks.len()))
                .add(&q.evidence, &retrieved, &cfg.ks);
            overall.add(&q.evidence, &retrieved, &cfg.ks);
            questions += 1;
            if cfg.details {
                details.push(QuestionResult {
                    conversation: conv.name.clone(),
                    category: q.category,
                    question: q.question.clone(),
                    evidence: q.evidence.clone(),
                    retrieved,
                });
            }
        }
        store.forget(&merchant).await?;
    }
    for sc in per_category.values_mut() {
        sc.finish();
    }
    overall.finish();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let idx = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[idx]
    };
    Ok(Report {
        ks: cfg.ks.clone(),
        episodes,
        questions,
        recall: overall.recall,
        any: overall.any,
        all: overall.all,
        per_category,
        latency_ms: (pct(0.50), pct(0.99)),
        import_per_sec: if import_secs > 0.0 {
            episodes as f64 / import_secs
        } else {
            0.0
        },
        details,
    })
}

/// Keeps the merchant-id charset.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_evidence_parse() {
        let d = parse_session_date("1:56 pm on 8 May, 2023").unwrap();
        assert_eq!(d.to_rfc3339(), "2023-05-08T13:56:00+00:00");
        assert!(parse_session_date("sometime").is_none());
        let ev = evidence_ids(&[json!("D1:3; D2:4"), json!("D"), json!(" D1:3 ")]);
        assert_eq!(ev, vec!["D1:3", "D2:4", "D"]);
        let r = recall_at(&ev, &["D2:4".into(), "D1:3".into()], 1);
        assert!((r - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn any_and_all_at_k() {
        let ev: Vec<String> = vec!["D1:3".into(), "D2:4".into()];
        let got: Vec<String> = vec!["D2:4".into(), "D9:9".into(), "D1:3".into()];
        assert!(any_at(&ev, &got, 1) && !all_at(&ev, &got, 1));
        assert!(any_at(&ev, &got, 3) && all_at(&ev, &got, 3));
        assert!(!any_at(&ev, &got[1..], 1));
        assert!(
            !any_at(&[], &got, 3) && !all_at(&[], &got, 3),
            "no evidence counts as a miss"
        );
        let mut s = Scores::new(1);
        s.add(&ev, &got, &[1]);
        s.add(&ev, &got[1..], &[1]);
        s.finish();
        assert_eq!((s.questions, s.any[0], s.all[0]), (2, 0.5, 0.0));
        assert!((s.recall[0] - 0.25).abs() < 1e-12);
    }
}
