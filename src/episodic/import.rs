//! Bulk import of episodes from JSONL: one `{"summary", "metadata"?, "occurred_at"?}` object
//! per line, embedded in batches and written with [`EpisodicStore::save_many`].
//!
//! Shared by `memex episodes import` and `POST /v1/merchants/{mid}/episodes/import`, so both
//! accept the same lines and key them the same way: each line is keyed by its number and a
//! SHA-256 of its text, which makes a re-run of the same input after a crash store nothing
//! twice. A bad line stops the import; every batch before it is already written.

use std::io::BufRead;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{parse_occurred_at, EpisodeDraft, EpisodicError, EpisodicStore};
use crate::merchant::MerchantId;

/// Episodes embedded and written per batch.
pub const IMPORT_BATCH: usize = 64;

/// The longest input line memex reads: a summary and metadata at their limits, JSON-escaped,
/// fit; a longer line is refused by number, never buffered whole.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Line `line` is not an acceptable episode.
    #[error("line {line} {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it, e.g. `has no string field "summary"`.
        reason: String,
    },
    /// Line `line` could not be read (too long, not UTF-8, I/O).
    #[error("cannot read line {line} ({source})")]
    Read {
        /// 1-based line number.
        line: usize,
        /// The reader's error.
        #[source]
        source: std::io::Error,
    },
    /// The embedder failed on a batch.
    #[error("cannot embed the summaries: {0}")]
    Embed(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store refused a batch.
    #[error(transparent)]
    Store(#[from] EpisodicError),
}

/// An import that stopped early: how many lines were stored before `error`.
#[derive(Debug, thiserror::Error)]
#[error("{error} (imported {imported} episode(s) before the error)")]
pub struct ImportFailure {
    /// Lines written (new or already present) before the error.
    pub imported: u64,
    /// Of those, episodes newly stored (the rest an earlier import had stored).
    pub new: u64,
    /// Why it stopped.
    #[source]
    pub error: ImportError,
}

/// The embedding seam of an import: the CLI embeds in-process, the server through its queue.
#[async_trait]
pub trait BatchEmbed: Send + Sync {
    /// One unit vector per text, in order.
    async fn embed_batch(
        &self,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>>;
}

/// One parsed import line.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportLine {
    /// Idempotency key: `import:<line number>:<first 16 bytes of SHA-256(line), hex>`.
    pub key: String,
    /// What happened.
    pub summary: String,
    /// A JSON object (`{}` when absent).
    pub metadata: Value,
    /// When it happened, if given.
    pub occurred_at: Option<DateTime<Utc>>,
}

/// Parses import line number `n` (1-based; `line` without its line ending).
pub fn parse_import_line(n: usize, line: &str) -> Result<ImportLine, ImportError> {
    let bad = |reason: &str| ImportError::Line {
        line: n,
        reason: reason.to_owned(),
    };
    let v: Value = serde_json::from_str(line).map_err(|e| ImportError::Line {
        line: n,
        reason: format!("is not valid JSON ({e})"),
    })?;
    let obj = v.as_object().ok_or_else(|| bad("is not a JSON object"))?;
    let summary = match obj.get("summary") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(bad("has an empty \"summary\"")),
        _ => return Err(bad("has no string field \"summary\"")),
    };
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(m @ Value::Object(_)) => m.clone(),
        Some(_) => return Err(bad("has a \"metadata\" that is not a JSON object")),
    };
    let occurred_at =
        match obj.get("occurred_at") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(parse_occurred_at(s).map_err(|_| {
                bad("has an \"occurred_at\" that is neither RFC 3339 nor YYYY-MM-DD")
            })?),
            Some(_) => return Err(bad("has an \"occurred_at\" that is not a string")),
        };
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(line.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    Ok(ImportLine {
        key: format!("import:{n}:{hex}"),
        summary,
        metadata,
        occurred_at,
    })
}

/// The lines of `reader` (without `\n` / `\r\n`), each read with at most `max` bytes held: a
/// longer line is an error and ends the input, as does invalid UTF-8.
pub fn bounded_lines<R: BufRead>(
    mut reader: R,
    max: usize,
) -> impl Iterator<Item = std::io::Result<String>> {
    use std::io::{Error, ErrorKind, Read};
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut buf = Vec::new();
        let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
        let read = (&mut reader).take(limit).read_until(b'\n', &mut buf);
        let line = match read {
            Ok(0) => {
                done = true;
                return None;
            }
            Ok(_) if buf.last() == Some(&b'\n') => {
                buf.pop();
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                buf
            }
            Ok(_) if buf.len() > max => {
                done = true;
                return Some(Err(Error::new(
                    ErrorKind::InvalidData,
                    format!("the line is longer than {max} bytes"),
                )));
            }
            Ok(_) => buf,
            Err(e) => {
                done = true;
                return Some(Err(e));
            }
        };
        Some(String::from_utf8(line).map_err(|_| {
            done = true;
            Error::new(ErrorKind::InvalidData, "the line is not valid UTF-8")
        }))
    })
}

/// What an import wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    /// Lines imported (new or already present from an earlier run).
    pub lines: u64,
    /// Of those, episodes newly stored by this import.
    pub new: u64,
}

/// Imports `lines` (numbered from 1; blank lines skipped) into `merchant`'s episodes, in
/// batches of [`IMPORT_BATCH`]. `progress` is called with the running count after each batch.
/// Returns how many lines were stored (new or already present from an earlier run). On a bad
/// line, every line before it is written first, then the failure names the line.
pub async fn import_lines<I>(
    store: &dyn EpisodicStore,
    embedder: &dyn BatchEmbed,
    merchant: &MerchantId,
    lines: I,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<u64, ImportFailure>
where
    I: IntoIterator<Item = std::io::Result<String>>,
{
    import_lines_counted(store, embedder, merchant, lines, progress)
        .await
        .map(|c| c.lines)
}

/// [`import_lines`], telling newly stored episodes from lines an earlier import had stored.
pub async fn import_lines_counted<I>(
    store: &dyn EpisodicStore,
    embedder: &dyn BatchEmbed,
    merchant: &MerchantId,
    lines: I,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<ImportCounts, ImportFailure>
where
    I: IntoIterator<Item = std::io::Result<String>>,
{
    let mut done = ImportCounts::default();
    let fail = |done: ImportCounts, error: ImportError| ImportFailure {
        imported: done.lines,
        new: done.new,
        error,
    };
    let mut batch: Vec<ImportLine> = Vec::with_capacity(IMPORT_BATCH);
    let mut stopped: Option<ImportError> = None;
    for (i, line) in lines.into_iter().enumerate() {
        let n = i + 1;
        let parsed = match line {
            Err(source) => Err(ImportError::Read { line: n, source }),
            Ok(l) if l.trim().is_empty() => continue,
            Ok(l) => parse_import_line(n, l.trim_end_matches('\r')),
        };
        match parsed {
            Ok(p) => batch.push(p),
            Err(e) => {
                stopped = Some(e);
                break;
            }
        }
        if batch.len() >= IMPORT_BATCH {
            let full = std::mem::take(&mut batch);
            match write_batch(store, embedder, merchant, full).await {
                Ok((lines, new)) => {
                    done.lines += lines;
                    done.new += new;
                }
                Err(error) => return Err(fail(done, error)),
            }
            progress(done.lines);
        }
    }
    match write_batch(store, embedder, merchant, batch).await {
        Ok((lines, new)) => {
            done.lines += lines;
            done.new += new;
        }
        Err(error) => return Err(fail(done, error)),
    }
    progress(done.lines);
    match stopped {
        Some(error) => Err(fail(done, error)),
        None => Ok(done),
    }
}

/// Embeds and stores one batch; returns how many lines it covered (new or already present)
/// and how many of them were newly stored.
async fn write_batch(
    store: &dyn EpisodicStore,
    embedder: &dyn BatchEmbed,
    merchant: &MerchantId,
    batch: Vec<ImportLine>,
) -> Result<(u64, u64), ImportError> {
    if batch.is_empty() {
        return Ok((0, 0));
    }
    let texts: Vec<String> = batch.iter().map(|l| l.summary.clone()).collect();
    let vectors = embedder
        .embed_batch(texts)
        .await
        .map_err(ImportError::Embed)?;
    if vectors.len() != batch.len() {
        return Err(ImportError::Embed(
            format!(
                "the embedder returned {} vectors for {} summaries",
                vectors.len(),
                batch.len()
            )
            .into(),
        ));
    }
    let n = batch.len() as u64;
    let drafts = batch
        .into_iter()
        .zip(vectors)
        .map(|(l, v)| {
            let mut d = EpisodeDraft::new(l.summary)
                .with_metadata(l.metadata)
                .with_embedding(v)
                .with_key(l.key);
            d.occurred_at = l.occurred_at;
            d
        })
        .collect();
    let new = store.save_many(merchant, drafts).await?;
    Ok((n, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_named_and_keyed_by_number_and_text() {
        let a = parse_import_line(3, r#"{"summary":"refund","occurred_at":"2024-05-01"}"#).unwrap();
        let b = parse_import_line(4, r#"{"summary":"refund","occurred_at":"2024-05-01"}"#).unwrap();
        assert!(a.key.starts_with("import:3:") && b.key.starts_with("import:4:"));
        assert_eq!(a.key[9..], b.key[9..]);
        assert!(a.occurred_at.is_some());
        let e = parse_import_line(7, r#"{"metadata":{}}"#).unwrap_err();
        assert_eq!(e.to_string(), "line 7 has no string field \"summary\"");
        let e = parse_import_line(2, "not json").unwrap_err();
        assert!(matches!(e, ImportError::Line { line: 2, .. }), "{e}");
    }

    #[test]
    fn bounded_lines_splits_and_refuses_long_lines() {
        let text = b"a\r\nb\n\nccccc\n";
        let got: Vec<_> = bounded_lines(&text[..], 4).collect();
        assert_eq!(got[0].as_deref().unwrap(), "a");
        assert_eq!(got[1].as_deref().unwrap(), "b");
        assert_eq!(got[2].as_deref().unwrap(), "");
        assert!(got[3].is_err());
        assert_eq!(got.len(), 4);
    }
}
