//! The ingestion pipeline: walk, hash, skip unchanged, parse, chunk, embed in batches, write
//! each file in its own transaction, prune, then bring the index up to date.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Instant, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::chunk::{chunk_blocks, Chunk};
use super::loader::{decode, parse, read_regular, FileKind, SkipReason};
use super::walk::{walk, WalkOptions};
use super::{Core, KbError, KnowledgeBase};

/// Ingestion settings.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// Remove documents whose files are gone (or, under the given folders, no longer ingestible).
    /// Documents whose files (or folders) exist but could not be read are always kept.
    pub prune: bool,
    /// Follow symbolic links whose canonical target stays inside one of the given paths
    /// (see [`super::walk`]); by default no link is followed.
    pub follow_symlinks: bool,
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    /// First time seen.
    New,
    /// Content changed; chunks replaced.
    Changed,
    /// Same content hash; nothing done.
    Unchanged,
    /// Not ingested (see the warning).
    Skipped,
}

/// Receives progress from [`KnowledgeBase::ingest_with`]. All methods default to nothing.
pub trait IngestObserver {
    /// The number of candidate files, once the walk is done.
    fn planned(&mut self, _files: usize) {}
    /// A file is finished; `chunks` were written for it.
    fn file_done(&mut self, _path: &Path, _status: FileStatus, _chunks: usize) {}
    /// A one-line warning about `path` (skipped file, unusable JSONL line).
    fn warning(&mut self, _path: &Path, _message: &str) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;
impl IngestObserver for NoProgress {}

/// Summary of an ingestion run (the `--json` output of `memex ingest`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct IngestReport {
    /// Candidate files looked at.
    pub files_seen: usize,
    /// Files ingested for the first time.
    pub files_new: usize,
    /// Files whose chunks were replaced.
    pub files_changed: usize,
    /// Files with an unchanged content hash.
    pub files_unchanged: usize,
    /// Files skipped with a warning.
    pub files_skipped: usize,
    /// Of the skipped, paths that exist but could not be read (an OS error, or missing):
    /// the ingestion is partial when this is not zero.
    pub files_unreadable: usize,
    /// Documents removed by `--prune`.
    pub files_pruned: usize,
    /// Chunks written.
    pub chunks_added: usize,
    /// Chunks deleted (replaced or pruned).
    pub chunks_removed: usize,
    /// Texts sent to the embedder.
    pub chunks_embedded: usize,
    /// Stored chunks whose damaged vector (NaN, wrong length) was re-embedded.
    pub chunks_repaired: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

struct Prepared {
    path: PathBuf,
    key: String,
    hash: String,
    size: u64,
    mtime_ns: i64,
    chunks: Vec<Chunk>,
    is_new: bool,
}

/// Whether `--prune` may delete the stored document of `path`: its file is gone (the OS says
/// "not found", not merely "cannot look"), or it lies under one of the walked `roots`; and in
/// neither case under a path in `protected` (those that exist but could not be read).
fn may_prune(path: &Path, roots: &[PathBuf], protected: &[PathBuf]) -> bool {
    if protected.iter().any(|q| path.starts_with(q)) {
        return false;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(_) => false,
        Ok(_) => roots.iter().any(|r| path.starts_with(r)),
    }
}

fn key_of(path: &Path) -> String {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    abs.to_string_lossy().into_owned()
}

impl Core {
    /// Ingests files and folders (recursively) without progress reporting.
    pub(crate) fn ingest(
        &self,
        paths: &[PathBuf],
        opts: &IngestOptions,
    ) -> Result<IngestReport, KbError> {
        self.ingest_with(paths, opts, &mut NoProgress)
    }

    /// Ingests files and folders (recursively), reporting progress to `observer`.
    ///
    /// Unchanged files (same content hash and chunking settings) cost no embedding; changed
    /// files have their chunks replaced; each file is committed in its own transaction.
    pub(crate) fn ingest_with(
        &self,
        paths: &[PathBuf],
        opts: &IngestOptions,
        observer: &mut dyn IngestObserver,
    ) -> Result<IngestReport, KbError> {
        let started = Instant::now();
        let mut report = IngestReport::default();
        let walked = walk(
            paths,
            WalkOptions {
                follow_symlinks: opts.follow_symlinks,
            },
        );
        let files = walked.files;
        observer.planned(files.len() + walked.skipped.len());
        for (path, reason) in walked.skipped {
            report.files_seen += 1;
            self.skip(&path, reason, &mut report, observer);
        }
        let mut protected = walked.unreadable;
        let known = self.store().documents()?;
        let fingerprint = self.options.chunking.fingerprint();
        let mut kept: HashSet<String> = HashSet::new();
        let mut pending: Vec<Prepared> = Vec::new();
        let mut pending_chunks = 0usize;
        let mut changed_store = false;

        for candidate in files {
            report.files_seen += 1;
            let path = candidate.path;
            let key = key_of(&candidate.target);
            let bytes = match read_regular(&candidate.target) {
                Ok(b) => b,
                Err(reason) => {
                    if reason.is_unreadable() {
                        protected.push(PathBuf::from(&key));
                    }
                    self.skip(&path, reason, &mut report, observer);
                    continue;
                }
            };
            let text = match decode(&bytes) {
                Ok(t) => t,
                Err(reason) => {
                    self.skip(&path, reason, &mut report, observer);
                    continue;
                }
            };
            let mut hasher = Sha256::new();
            hasher.update(fingerprint.as_bytes());
            hasher.update([0u8]);
            hasher.update(&bytes);
            let hash = format!("{:x}", hasher.finalize());
            let previous = known.get(&key);
            if previous.is_some_and(|d| d.hash == hash) {
                kept.insert(key);
                report.files_unchanged += 1;
                observer.file_done(&path, FileStatus::Unchanged, 0);
                continue;
            }
            let Some(kind) = FileKind::of(&path).or_else(|| FileKind::of(&candidate.target)) else {
                self.skip(&path, SkipReason::Unsupported, &mut report, observer);
                continue;
            };
            let (blocks, warnings) = parse(kind, text);
            for w in warnings {
                observer.warning(&path, &w);
            }
            let embedder = &self.embedder;
            let count = |t: &str| embedder.count_tokens(t).unwrap_or_else(|_| t.len() / 3 + 2);
            let chunks = chunk_blocks(&blocks, &self.options.chunking, &count);
            if chunks.is_empty() {
                self.skip(&path, SkipReason::Empty, &mut report, observer);
                continue;
            }
            let meta = std::fs::metadata(&candidate.target).ok();
            let mtime_ns = meta
                .as_ref()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i64);
            kept.insert(key.clone());
            pending_chunks += chunks.len();
            pending.push(Prepared {
                path,
                key,
                hash,
                size: bytes.len() as u64,
                mtime_ns,
                chunks,
                is_new: previous.is_none(),
            });
            if pending_chunks >= self.options.embed_batch {
                self.flush(&mut pending, &mut report, observer)?;
                pending_chunks = 0;
                changed_store = true;
            }
        }
        if !pending.is_empty() {
            self.flush(&mut pending, &mut report, observer)?;
            changed_store = true;
        }

        if opts.prune {
            let roots: Vec<PathBuf> = paths
                .iter()
                .filter_map(|p| std::fs::canonicalize(p).ok())
                .collect();
            let mut doomed: Vec<&String> = known
                .keys()
                .filter(|k| !kept.contains(*k))
                .filter(|k| {
                    let p = Path::new(k.as_str());
                    may_prune(p, &roots, &protected)
                })
                .collect();
            doomed.sort();
            for key in doomed {
                let removed = self.store_mut_delete(key)?;
                report.files_pruned += 1;
                report.chunks_removed += removed;
                changed_store = true;
            }
        }

        // Chunks whose stored vector is damaged (NaN, wrong length) are re-embedded even when
        // their file is unchanged.
        let repaired = self.repair_vectors()?;
        if repaired > 0 {
            report.chunks_repaired = repaired;
            report.chunks_embedded += repaired;
            changed_store = true;
        }
        if changed_store {
            self.sync_index(true)?;
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Stores a document whose chunks were embedded elsewhere (an import of precomputed
    /// vectors, or seeding a benchmark), replacing any document under the same `source` key.
    /// The index catches up on the next search. Returns the number of chunks written.
    pub(crate) fn insert_embedded(
        &self,
        source: &str,
        chunks: &[Chunk],
        vectors: &[Vec<f32>],
    ) -> Result<usize, KbError> {
        let dim = self.embedder.dim();
        if chunks.len() != vectors.len() {
            return Err(KbError::EmbedCount {
                expected: chunks.len(),
                got: vectors.len(),
            });
        }
        if let Some(bad) = vectors.iter().find(|v| v.len() != dim) {
            return Err(KbError::Index(crate::index::IndexError::Dimension {
                expected: dim,
                got: bad.len(),
            }));
        }
        let mut hasher = Sha256::new();
        for c in chunks {
            hasher.update(c.text.as_bytes());
        }
        let hash = format!("{:x}", hasher.finalize());
        let outcome = self
            .store()
            .replace_document(source, &hash, 0, 0, chunks, vectors)?;
        Ok(outcome.added)
    }

    fn store_mut_delete(&self, key: &str) -> Result<usize, KbError> {
        self.store().delete_document(key)
    }

    fn skip(
        &self,
        path: &Path,
        reason: SkipReason,
        report: &mut IngestReport,
        observer: &mut dyn IngestObserver,
    ) {
        report.files_skipped += 1;
        if reason.is_unreadable() {
            report.files_unreadable += 1;
        }
        observer.warning(path, &format!("skipped: {reason}"));
        observer.file_done(path, FileStatus::Skipped, 0);
    }

    /// Embeds every pending chunk (in batches), then writes each file in its own transaction.
    fn flush(
        &self,
        pending: &mut Vec<Prepared>,
        report: &mut IngestReport,
        observer: &mut dyn IngestObserver,
    ) -> Result<(), KbError> {
        let texts: Vec<String> = pending
            .iter()
            .flat_map(|p| p.chunks.iter().map(|c| c.embedding_text()))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(refs.len());
        for batch in refs.chunks(self.options.embed_batch.max(1)) {
            let out = self.embedder.embed(batch)?;
            if out.len() != batch.len() {
                return Err(KbError::EmbedCount {
                    expected: batch.len(),
                    got: out.len(),
                });
            }
            vectors.extend(out);
        }
        let dim = self.embedder.dim();
        if let Some(bad) = vectors.iter().find(|v| v.len() != dim) {
            return Err(KbError::Index(crate::index::IndexError::Dimension {
                expected: dim,
                got: bad.len(),
            }));
        }
        report.chunks_embedded += refs.len();
        let mut start = 0;
        for p in pending.drain(..) {
            let vecs = &vectors[start..start + p.chunks.len()];
            start += p.chunks.len();
            let outcome = self
                .store()
                .replace_document(&p.key, &p.hash, p.size, p.mtime_ns, &p.chunks, vecs)?;
            report.chunks_added += outcome.added;
            report.chunks_removed += outcome.removed;
            let status = if p.is_new {
                report.files_new += 1;
                FileStatus::New
            } else {
                report.files_changed += 1;
                FileStatus::Changed
            };
            observer.file_done(&p.path, status, outcome.added);
        }
        Ok(())
    }
}

impl KnowledgeBase {
    /// Ingests files and folders (recursively) without progress reporting.
    pub fn ingest(&self, paths: &[PathBuf], opts: &IngestOptions) -> Result<IngestReport, KbError> {
        self.core().ingest(paths, opts)
    }

    /// Ingests files and folders (recursively), reporting progress to `observer`.
    ///
    /// Unchanged files (same content hash and chunking settings) cost no embedding; changed
    /// files have their chunks replaced; each file is committed in its own transaction.
    pub fn ingest_with(
        &self,
        paths: &[PathBuf],
        opts: &IngestOptions,
        observer: &mut dyn IngestObserver,
    ) -> Result<IngestReport, KbError> {
        self.core().ingest_with(paths, opts, observer)
    }

    /// Stores a document whose chunks were embedded elsewhere (an import of precomputed
    /// vectors, or seeding a benchmark), replacing any document under the same `source` key.
    /// The index catches up on the next search. Returns the number of chunks written.
    pub fn insert_embedded(
        &self,
        source: &str,
        chunks: &[Chunk],
        vectors: &[Vec<f32>],
    ) -> Result<usize, KbError> {
        self.core().insert_embedded(source, chunks, vectors)
    }
}
