//! Fixtures for the tools and payments tests: a seeded payments database in a temporary
//! directory, and a small keyword search over the real `data/kb` documents standing in for the
//! knowledge base behind the `KnowledgeSearch` seam.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memex::domain::payments::{KnowledgeHit, KnowledgeSearch, PaymentsDb};
use memex::merchant::MerchantId;
use memex::tools::ToolContext;

/// The repository's demo seed file.
pub fn seed_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/payments/seed.json")
}

/// A seeded database in its own temporary directory (kept alive by the fixture).
pub struct SeededDb {
    pub db: Arc<PaymentsDb>,
    pub dir: tempfile::TempDir,
}

impl SeededDb {
    pub fn new() -> SeededDb {
        let dir = tempfile::tempdir().unwrap();
        let db = PaymentsDb::open_in_dir(dir.path()).unwrap();
        db.seed_from_file(&seed_path()).unwrap();
        SeededDb {
            db: Arc::new(db),
            dir,
        }
    }

    /// The database file.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join(PaymentsDb::FILE_NAME)
    }

    /// A second, independent connection to the same file (as another process would have).
    pub fn reopen(&self) -> Arc<PaymentsDb> {
        Arc::new(PaymentsDb::open(&self.path()).unwrap())
    }
}

pub fn mid(s: &str) -> MerchantId {
    MerchantId::parse(s).unwrap()
}

pub fn ctx(merchant: &str) -> ToolContext {
    ToolContext::new(mid(merchant), "test-session")
}

/// One `##` section of a knowledge-base document.
struct Section {
    source: String,
    heading: String,
    text: String,
}

/// Scores sections of the real `data/kb` markdown documents by how many distinct query words
/// they contain. Only a stand-in for the real hybrid search, which lives behind the same
/// trait; these tests check the tool, not retrieval quality.
pub struct KeywordKb {
    sections: Vec<Section>,
}

impl KeywordKb {
    pub fn load() -> Arc<KeywordKb> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/kb");
        let mut sections = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        files.sort();
        for path in files {
            let source = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let mut title = String::new();
            let mut heading = String::new();
            let mut body = String::new();
            let mut flush = |heading: &str, body: &mut String, title: &str| {
                if !body.trim().is_empty() {
                    sections.push(Section {
                        source: source.clone(),
                        heading: if heading.is_empty() {
                            title.to_owned()
                        } else {
                            format!("{title} > {heading}")
                        },
                        text: body.trim().to_owned(),
                    });
                }
                body.clear();
            };
            for line in text.lines() {
                if let Some(t) = line.strip_prefix("# ") {
                    title = t.trim().to_owned();
                } else if let Some(h) = line.strip_prefix("## ") {
                    flush(&heading, &mut body, &title);
                    heading = h.trim().to_owned();
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
            flush(&heading, &mut body, &title);
        }
        Arc::new(KeywordKb { sections })
    }
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
        .map(str::to_lowercase)
        .collect()
}

impl KnowledgeSearch for KeywordKb {
    fn search(
        &self,
        query: &str,
        k: usize,
    ) -> Result<Vec<KnowledgeHit>, memex::domain::payments::KnowledgeError> {
        let mut q = words(query);
        q.sort();
        q.dedup();
        let mut hits: Vec<KnowledgeHit> = self
            .sections
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let text = words(&format!("{} {}", s.heading, s.text));
                let score = q.iter().filter(|w| text.contains(w)).count() as f32;
                (score > 0.0).then(|| KnowledgeHit {
                    chunk_id: i as i64,
                    source: s.source.clone(),
                    heading: s.heading.clone(),
                    text: s.text.clone(),
                    score: score / q.len().max(1) as f32,
                })
            })
            .collect();
        hits.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.chunk_id.cmp(&b.chunk_id))
        });
        hits.truncate(k);
        Ok(hits)
    }
}

/// A knowledge base that always fails, for the error path.
pub struct BrokenKb;

impl KnowledgeSearch for BrokenKb {
    fn search(
        &self,
        _query: &str,
        _k: usize,
    ) -> Result<Vec<KnowledgeHit>, memex::domain::payments::KnowledgeError> {
        Err("the index file is missing".into())
    }
}
