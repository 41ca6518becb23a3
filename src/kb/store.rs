//! The SQLite store: documents, chunks (with little-endian f32 vector BLOBs) and an FTS5 index
//! over chunk text kept in sync by triggers. The source of truth of the knowledge base.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::chunk::Chunk;
use super::error::KbError;

/// How long a knowledge-base statement waits for another process's lock (an ingest in progress).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// `meta` key of the weight precision that produced the stored vectors (`f32`, `f16`, `int8`).
const VECTOR_PRECISION: &str = "vector_precision";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    path        TEXT NOT NULL UNIQUE,
    hash        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    ingested_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id     INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ord        INTEGER NOT NULL,
    heading    TEXT NOT NULL,
    text       TEXT NOT NULL,
    line_start INTEGER NOT NULL,
    line_end   INTEGER NOT NULL,
    metadata   TEXT,
    vector     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, heading, content='chunks', content_rowid='id',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text, heading) VALUES (new.id, new.text, new.heading);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text, heading)
        VALUES ('delete', old.id, old.text, old.heading);
END;
INSERT OR IGNORE INTO meta(key, value) VALUES ('generation', '0');
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', '1');
";

/// A stored document's identity and content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DocRow {
    pub(crate) id: i64,
    pub(crate) hash: String,
}

/// A stored chunk as returned to searchers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChunkRow {
    pub(crate) source: String,
    pub(crate) heading: String,
    pub(crate) text: String,
    pub(crate) line_start: usize,
    pub(crate) line_end: usize,
    pub(crate) metadata: Option<String>,
}

/// What a document write changed.
#[derive(Debug, Default, Clone)]
pub(crate) struct WriteOutcome {
    pub(crate) added: usize,
    pub(crate) removed: usize,
}

/// Encodes a vector as little-endian f32 bytes.
pub fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Decodes a little-endian f32 BLOB; `None` when its length is not a multiple of 4.
pub fn blob_to_vector(b: &[u8]) -> Option<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Usable vectors by chunk id, and the ids whose stored vector is damaged.
pub(crate) type Fetched = (Vec<(u64, Vec<f32>)>, Vec<u64>);

/// Every usable vector of the store, from one snapshot.
pub(crate) struct AllVectors {
    pub(crate) generation: u64,
    pub(crate) ids: Vec<u64>,
    /// `ids.len() * dim` components.
    pub(crate) vectors: Vec<f32>,
    /// Chunks whose vector is damaged, left out.
    pub(crate) damaged: Vec<u64>,
}

/// Whether a decoded vector has `dim` finite components.
fn usable(v: &[f32], dim: usize) -> bool {
    v.len() == dim && v.iter().all(|x| x.is_finite())
}

/// Whether a BLOB holds `dim` finite little-endian f32 components.
fn blob_usable(b: &[u8], dim: usize) -> bool {
    b.len() == dim * 4
        && b.chunks_exact(4)
            .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
}

pub(crate) struct Store {
    conn: Connection,
    /// Capped document frequencies of FTS5 terms, valid for `df_generation` only.
    df_cache: HashMap<String, usize>,
    df_generation: Option<u64>,
}

impl Store {
    pub(crate) fn open(path: &Path) -> Result<Store, KbError> {
        let conn = crate::sqlite::OpenOptions::new()
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .open(path)?;
        let mut store = Store {
            conn,
            df_cache: HashMap::new(),
            df_generation: None,
        };
        crate::sqlite::apply_schema(&mut store.conn, SCHEMA)?;
        Ok(store)
    }

    pub(crate) fn meta(&self, key: &str) -> Result<Option<String>, KbError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub(crate) fn set_meta(&self, key: &str, value: &str) -> Result<(), KbError> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Records the weight precision of the embedder that produces this store's vectors, or
    /// refuses one that differs from the precision its stored vectors were made with. A store
    /// with chunks but no record predates the record and holds `f32` vectors.
    pub(crate) fn check_vector_precision(&self, precision: &str) -> Result<(), KbError> {
        let (_, chunks) = self.counts()?;
        let stored = match self.meta(VECTOR_PRECISION)? {
            Some(p) => Some(p),
            None if chunks > 0 => Some("f32".to_string()),
            None => None,
        };
        match stored {
            Some(stored) if stored != precision && chunks > 0 => Err(KbError::PrecisionMismatch {
                stored,
                embedder: precision.to_string(),
            }),
            Some(stored) if stored == precision => Ok(()),
            _ => self.set_meta(VECTOR_PRECISION, precision),
        }
    }

    pub(crate) fn generation(&self) -> Result<u64, KbError> {
        Ok(self
            .meta("generation")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    pub(crate) fn documents(&self) -> Result<HashMap<String, DocRow>, KbError> {
        let mut stmt = self.conn.prepare("SELECT path, id, hash FROM documents")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                DocRow {
                    id: r.get(1)?,
                    hash: r.get(2)?,
                },
            ))
        })?;
        let mut out = HashMap::new();
        for row in rows {
            let (path, doc) = row?;
            out.insert(path, doc);
        }
        Ok(out)
    }

    /// Replaces (or creates) the document at `path` with `chunks`, in one transaction.
    pub(crate) fn replace_document(
        &mut self,
        path: &str,
        hash: &str,
        size: u64,
        mtime_ns: i64,
        chunks: &[Chunk],
        vectors: &[Vec<f32>],
    ) -> Result<WriteOutcome, KbError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut outcome = WriteOutcome::default();
        let old: Option<i64> = tx
            .query_row("SELECT id FROM documents WHERE path = ?1", [path], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(doc_id) = old {
            outcome.removed = tx.execute("DELETE FROM chunks WHERE doc_id = ?1", [doc_id])?;
            tx.execute("DELETE FROM documents WHERE id = ?1", [doc_id])?;
        }
        tx.execute(
            "INSERT INTO documents(path, hash, size, mtime_ns, chunk_count, ingested_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                path,
                hash,
                size as i64,
                mtime_ns,
                chunks.len() as i64,
                chrono::Utc::now().to_rfc3339()
            ],
        )?;
        let doc_id = tx.last_insert_rowid();
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO chunks(doc_id, ord, heading, text, line_start, line_end, metadata, vector)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for (i, (c, v)) in chunks.iter().zip(vectors).enumerate() {
                ins.execute(params![
                    doc_id,
                    i as i64,
                    c.heading_text(),
                    c.text,
                    c.line_start as i64,
                    c.line_end as i64,
                    c.metadata,
                    vector_to_blob(v)
                ])?;
                outcome.added += 1;
            }
        }
        bump_generation(&tx)?;
        tx.commit()?;
        Ok(outcome)
    }

    /// Deletes the document at `path` and its chunks; returns the number of chunks removed.
    pub(crate) fn delete_document(&mut self, path: &str) -> Result<usize, KbError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let removed = tx.execute(
            "DELETE FROM chunks WHERE doc_id IN (SELECT id FROM documents WHERE path = ?1)",
            [path],
        )?;
        tx.execute("DELETE FROM documents WHERE path = ?1", [path])?;
        bump_generation(&tx)?;
        tx.commit()?;
        Ok(removed)
    }

    /// The generation and every chunk id, read in one snapshot.
    pub(crate) fn id_snapshot(&mut self) -> Result<(u64, Vec<u64>), KbError> {
        let tx = self.conn.transaction()?;
        let generation: u64 = tx
            .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let ids = {
            let mut stmt = tx.prepare("SELECT id FROM chunks")?;
            let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
            rows.map(|r| r.map(|id| id as u64))
                .collect::<Result<Vec<u64>, _>>()?
        };
        tx.commit()?;
        Ok((generation, ids))
    }

    /// Vectors of the given chunk ids (missing ids are left out), and the ids whose stored
    /// vector is damaged (wrong length, NaN or infinity), also left out.
    pub(crate) fn vectors_for(&self, ids: &[u64], dim: usize) -> Result<Fetched, KbError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut damaged = Vec::new();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT vector FROM chunks WHERE id = ?1")?;
        for &id in ids {
            let blob: Option<Vec<u8>> = stmt.query_row([id as i64], |r| r.get(0)).optional()?;
            if let Some(b) = blob {
                match blob_to_vector(&b).filter(|v| usable(v, dim)) {
                    Some(v) => out.push((id, v)),
                    None => damaged.push(id),
                }
            }
        }
        Ok((out, damaged))
    }

    /// Ids of every chunk whose stored vector is damaged (wrong length, NaN or infinity).
    pub(crate) fn damaged_chunks(&self, dim: usize) -> Result<Vec<u64>, KbError> {
        let mut stmt = self.conn.prepare("SELECT id, vector FROM chunks")?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let id = row.get::<_, i64>(0)? as u64;
            let ok = row
                .get_ref(1)?
                .as_blob()
                .ok()
                .is_some_and(|b| blob_usable(b, dim));
            if !ok {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Text to embed (heading context and text) of a chunk.
    pub(crate) fn chunk_embedding_text(&self, id: u64) -> Result<Option<String>, KbError> {
        Ok(self
            .conn
            .query_row(
                "SELECT heading, text FROM chunks WHERE id = ?1",
                [id as i64],
                |r| {
                    let heading: String = r.get(0)?;
                    let text: String = r.get(1)?;
                    Ok(if heading.is_empty() {
                        text
                    } else {
                        format!("{heading}\n{text}")
                    })
                },
            )
            .optional()?)
    }

    /// Replaces the stored vector of chunk `id` (a repair), bumping the generation.
    pub(crate) fn set_vector(&mut self, id: u64, v: &[f32]) -> Result<(), KbError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE chunks SET vector = ?2 WHERE id = ?1",
            params![id as i64, vector_to_blob(v)],
        )?;
        bump_generation(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Every chunk id and usable vector, with the generation, from one snapshot; chunks whose
    /// vector is damaged (wrong length, NaN or infinity) are returned apart.
    pub(crate) fn all_vectors(&mut self, dim: usize) -> Result<AllVectors, KbError> {
        let tx = self.conn.transaction()?;
        let generation: u64 = tx
            .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut ids = Vec::new();
        let mut vectors = Vec::new();
        let mut damaged = Vec::new();
        {
            let mut stmt = tx.prepare("SELECT id, vector FROM chunks ORDER BY id")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let id = row.get::<_, i64>(0)? as u64;
                let blob = match row.get_ref(1)?.as_blob() {
                    Ok(b) if blob_usable(b, dim) => b,
                    _ => {
                        damaged.push(id);
                        continue;
                    }
                };
                ids.push(id);
                vectors.extend(
                    blob.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
            }
        }
        tx.commit()?;
        Ok(AllVectors {
            generation,
            ids,
            vectors,
            damaged,
        })
    }

    /// Keyword search: chunk ids best first with their BM25 score (lower is better in FTS5;
    /// returned negated so higher is better).
    pub(crate) fn fts_search(&self, expr: &str, limit: usize) -> Result<Vec<(u64, f64)>, KbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT rowid, bm25(chunks_fts, 1.0, 0.5) AS score FROM chunks_fts
             WHERE chunks_fts MATCH ?1 ORDER BY score LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![expr, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, -r.get::<_, f64>(1)?))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Number of chunks matching the one-term expression `term`, counted up to `cap + 1` (so
    /// the cost is bounded by `cap`, however common the term). Cached per store generation.
    pub(crate) fn capped_df(&mut self, term: &str, cap: usize) -> Result<usize, KbError> {
        let generation = self.generation()?;
        if self.df_generation != Some(generation) {
            self.df_cache.clear();
            self.df_generation = Some(generation);
        }
        if let Some(&df) = self.df_cache.get(term) {
            return Ok(df);
        }
        let df = self.capped_count(term, cap)?;
        if self.df_cache.len() >= 100_000 {
            self.df_cache.clear();
        }
        self.df_cache.insert(term.to_string(), df);
        Ok(df)
    }

    /// Matches of `expr`, counted up to `cap + 1`.
    pub(crate) fn capped_count(&self, expr: &str, cap: usize) -> Result<usize, KbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT count(*) FROM (SELECT 1 FROM chunks_fts WHERE chunks_fts MATCH ?1 LIMIT ?2)",
        )?;
        let n: i64 = stmt.query_row(params![expr, cap as i64 + 1], |r| r.get(0))?;
        Ok(n.max(0) as usize)
    }

    /// Keyword search restricted to the newest `window` matches of `expr` (by chunk id), so
    /// BM25 scores at most `window` rows.
    pub(crate) fn fts_search_recent(
        &self,
        expr: &str,
        limit: usize,
        window: usize,
    ) -> Result<Vec<(u64, f64)>, KbError> {
        let floor: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ?1
                 ORDER BY rowid DESC LIMIT 1 OFFSET ?2",
            )?
            .query_row(params![expr, window.saturating_sub(1) as i64], |r| r.get(0))
            .optional()?;
        let Some(floor) = floor else {
            return self.fts_search(expr, limit);
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT rowid, bm25(chunks_fts, 1.0, 0.5) AS score FROM chunks_fts
             WHERE chunks_fts MATCH ?1 AND rowid >= ?3 ORDER BY score LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![expr, limit as i64, floor], |r| {
            Ok((r.get::<_, i64>(0)? as u64, -r.get::<_, f64>(1)?))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Chunk rows for `ids` (missing ids are left out).
    pub(crate) fn chunks(&self, ids: &[u64]) -> Result<HashMap<u64, ChunkRow>, KbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT d.path, c.heading, c.text, c.line_start, c.line_end, c.metadata
             FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE c.id = ?1",
        )?;
        let mut out = HashMap::new();
        for &id in ids {
            let row = stmt
                .query_row([id as i64], |r| {
                    Ok(ChunkRow {
                        source: r.get(0)?,
                        heading: r.get(1)?,
                        text: r.get(2)?,
                        line_start: r.get::<_, i64>(3)?.max(0) as usize,
                        line_end: r.get::<_, i64>(4)?.max(0) as usize,
                        metadata: r.get(5)?,
                    })
                })
                .optional()?;
            if let Some(row) = row {
                out.insert(id, row);
            }
        }
        Ok(out)
    }

    /// (documents, chunks) counts.
    pub(crate) fn counts(&self) -> Result<(u64, u64), KbError> {
        let docs: i64 = self
            .conn
            .query_row("SELECT count(*) FROM documents", [], |r| r.get(0))?;
        let chunks: i64 = self
            .conn
            .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))?;
        Ok((docs as u64, chunks as u64))
    }

    /// Writes a consistent, compacted copy of the whole database to `dest` (which must not
    /// exist) with `VACUUM INTO`: one read transaction, so the copy is one snapshot even while
    /// the WAL holds committed pages, unlike a file copy.
    pub(crate) fn vacuum_into(&self, dest: &Path) -> Result<(), KbError> {
        let target = dest.to_str().ok_or_else(|| KbError::Io {
            path: dest.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the snapshot path is not valid UTF-8",
            ),
        })?;
        self.conn.execute("VACUUM INTO ?1", [target])?;
        Ok(())
    }
}

fn bump_generation(tx: &rusqlite::Transaction<'_>) -> Result<(), KbError> {
    tx.execute(
        "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'generation'",
        [],
    )?;
    Ok(())
}
