//! Published generations of the knowledge base (`--kb-url`): one shared folder that every
//! worker reads and every ingest writes, standing in for object storage.
//!
//! Layout of the folder (`file:///shared/kb`):
//!
//! ```text
//! CURRENT            "gen-000042\n": the generation to serve (replaced atomically)
//! gen-000042/        kb.db (VACUUM INTO), kb.hnsw (or the index file of the publisher's
//!                    backend), manifest.json (sha256 and size of each file)
//! gen-000041/ ...    older generations, kept for readers still copying them
//! .publish.lock      the publishers' OS lock (`File::lock`)
//! .tmp-…/            a generation being written (never named by CURRENT)
//! ```
//!
//! Rules:
//! * **Written completely, then announced.** A generation is written into a `.tmp-` folder,
//!   every file fsynced, the folder renamed to `gen-N` and the parent fsynced, and only then is
//!   `CURRENT` replaced ([`crate::fsutil::write_atomic`]). A reader that follows `CURRENT`
//!   never finds a half-written generation; a reader that copies one anyway (a folder deleted
//!   under it, a damaged file) fails the manifest check and serves nothing from it.
//! * **One publisher at a time.** Publishing holds an exclusive OS lock on `.publish.lock` for
//!   the whole read-modify-publish cycle: generation numbers never collide, and an ingest
//!   starts from the latest published generation, so no one's documents are lost.
//! * **Retention.** The newest [`KEEP_GENERATIONS`] generations and the one `CURRENT` names
//!   are kept. An older generation is deleted (by a publisher, under the lock) only once the
//!   generation after it was announced more than [`DELETE_GRACE`] ago: a reader reads
//!   `CURRENT` and copies that generation within seconds, so by then no reader can still be
//!   opening it; one that is slower anyway fails the manifest check and retries with the
//!   generation then current.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{IngestObserver, IngestOptions, IngestReport, KbError, KbOptions, KnowledgeBase};
use crate::embed::Embedder;

/// Name of the file naming the generation to serve.
pub const CURRENT_FILE: &str = "CURRENT";
/// Name of each generation's manifest.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Name of the publishers' lock file.
pub const LOCK_FILE: &str = ".publish.lock";
/// Newest generations always kept.
pub const KEEP_GENERATIONS: usize = 3;
/// How long after its successor was announced an old generation may still be read.
pub const DELETE_GRACE: Duration = Duration::from_secs(60);

/// Errors of the published knowledge base.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The URL names no supported location.
    #[error("unsupported knowledge-base URL {url:?}: use file:///absolute/folder")]
    BadUrl {
        /// The URL as given (it names a folder; it carries no secret).
        url: String,
    },
    /// A file-system operation failed.
    #[error("{}: {source}", crate::kb::text::display_path(.path))]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `CURRENT` or a manifest is not what a publisher writes.
    #[error("{}: {reason}", crate::kb::text::display_path(.path))]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A copied file does not match its manifest (damaged, or replaced while copied).
    #[error(
        "{generation}: {file} does not match its manifest (expected {expected}, found {found})"
    )]
    Mismatch {
        /// The generation.
        generation: String,
        /// The file name.
        file: String,
        /// Size and sha256 the manifest records.
        expected: String,
        /// Size and sha256 of the copy.
        found: String,
    },
    /// The knowledge base failed.
    #[error(transparent)]
    Kb(#[from] KbError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where published generations live: `file:///absolute/folder`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KbUrl {
    root: PathBuf,
}

impl KbUrl {
    /// Parses `file:///absolute/folder` (any other scheme, a relative path or `..` is refused).
    pub fn parse(url: &str) -> Result<Self, PublishError> {
        let bad = || PublishError::BadUrl {
            url: crate::kb::text::escape_controls(url),
        };
        use crate::store_url::{Scheme, StoreUrl};
        match StoreUrl::parse(url, &[Scheme::File], "kb") {
            Ok(StoreUrl::File(root)) => Ok(KbUrl { root }),
            _ => Err(bad()),
        }
    }

    /// The shared folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl std::fmt::Display for KbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "file://{}", self.root.display())
    }
}

/// The name of generation `n`: `gen-000042`.
pub fn generation_name(n: u64) -> String {
    format!("gen-{n:06}")
}

/// The number of a generation name, when it is one.
pub fn generation_number(name: &str) -> Option<u64> {
    let n: u64 = name.strip_prefix("gen-")?.parse().ok()?;
    (generation_name(n) == name).then_some(n)
}

/// One file of a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Plain file name inside the generation folder.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex sha256 of the content.
    pub sha256: String,
}

/// `manifest.json` of a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The generation's name.
    pub generation: String,
    /// Unix seconds when it was written.
    pub published_at: u64,
    /// Every file of the generation but the manifest.
    pub files: Vec<ManifestFile>,
}

/// A plain file name a manifest may list (no separators, not hidden, short).
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name != MANIFEST_FILE
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Longest `CURRENT` read (it holds one generation name).
const MAX_CURRENT_BYTES: u64 = 4 * 1024;
/// Longest `manifest.json` read (a few hundred bytes per file listed).
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// Copies `src` to `dst` (created new), returning size and sha256 of what was copied. Only a
/// regular file is copied (a link, FIFO or device is refused before a byte is read), and at
/// most `limit + 1` bytes: a file already longer than `limit` is reported with its length and
/// not read, one that grows while copied stops at `limit + 1` bytes; either fails the
/// caller's size check.
fn copy_hashing(src: &Path, dst: &Path, limit: u64) -> Result<(u64, String), PublishError> {
    let input =
        crate::fsutil::open_regular(src, crate::fsutil::Links::Refuse).map_err(io_err(src))?;
    let len = input.metadata().map_err(io_err(src))?.len();
    if len > limit {
        return Ok((len, "(not read: longer than the manifest says)".into()));
    }
    let mut input = input.take(limit.saturating_add(1));
    let mut output = File::create_new(dst).map_err(io_err(dst))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(io_err(src))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(io_err(dst))?;
        total += n as u64;
    }
    output.sync_all().map_err(io_err(dst))?;
    Ok((total, format!("{:x}", hasher.finalize())))
}

/// Size and sha256 of a file.
fn hash_file(path: &Path) -> Result<(u64, String), PublishError> {
    let mut input = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, format!("{:x}", hasher.finalize())))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Held while publishing: the exclusive OS lock on the folder's `.publish.lock` (released
/// when dropped, or by the OS when the process dies).
#[derive(Debug)]
pub struct PublishLock {
    _file: File,
}

/// What [`SharedKb::ensure_published`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Ensured {
    /// A generation was already published; nothing was ingested.
    Adopted(String),
    /// Nothing was published yet: the paths were ingested and published as this generation.
    Published(String, IngestReport),
}

/// The shared folder of published generations.
#[derive(Debug, Clone)]
pub struct SharedKb {
    url: KbUrl,
}

impl SharedKb {
    /// The folder named by `url` (created on the first publish).
    pub fn new(url: KbUrl) -> Self {
        SharedKb { url }
    }

    /// The URL.
    pub fn url(&self) -> &KbUrl {
        &self.url
    }

    /// The generation `CURRENT` names, or `None` when nothing is published yet.
    pub fn current(&self) -> Result<Option<String>, PublishError> {
        let path = self.url.root.join(CURRENT_FILE);
        let bytes = match crate::fsutil::read_capped(
            &path,
            MAX_CURRENT_BYTES,
            crate::fsutil::Links::Follow,
        ) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let name = String::from_utf8_lossy(&bytes);
        let name = name.trim();
        if generation_number(name).is_none() {
            return Err(PublishError::Malformed {
                path,
                reason: "does not name a generation (gen-NNNNNN)".into(),
            });
        }
        Ok(Some(name.to_string()))
    }

    /// Takes the publishers' exclusive lock, waiting for another publisher to finish.
    pub fn lock(&self) -> Result<PublishLock, PublishError> {
        let root = &self.url.root;
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        let path = root.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        Ok(PublishLock { _file: file })
    }

    /// Reads a generation's manifest.
    pub fn manifest(&self, generation: &str) -> Result<Manifest, PublishError> {
        let path = self.url.root.join(generation).join(MANIFEST_FILE);
        let bytes =
            crate::fsutil::read_capped(&path, MAX_MANIFEST_BYTES, crate::fsutil::Links::Refuse)
                .map_err(io_err(&path))?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| PublishError::Malformed {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if manifest.generation != generation
            || manifest.files.is_empty()
            || !manifest.files.iter().all(|f| safe_name(&f.name))
        {
            return Err(PublishError::Malformed {
                path,
                reason: "names another generation, no files or an unsafe file name".into(),
            });
        }
        Ok(manifest)
    }

    /// Copies `generation` into `dest` (which must not exist) and checks every file against
    /// the manifest before `dest` appears: `dest` is a complete, verified copy or absent.
    /// Bounded by the manifest: a file that is not a regular file (a link to `/dev/zero`, a
    /// FIFO) is refused unread, and no more than its listed size + 1 byte is copied, so a
    /// damaged generation fails fast and the caller can go on to the next `CURRENT`.
    pub fn fetch(&self, generation: &str, dest: &Path) -> Result<(), PublishError> {
        let manifest = self.manifest(generation)?;
        let parent = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        let tmp = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempdir_in(parent)
            .map_err(io_err(parent))?;
        let src = self.url.root.join(generation);
        for f in &manifest.files {
            let (bytes, sha) =
                copy_hashing(&src.join(&f.name), &tmp.path().join(&f.name), f.bytes)?;
            if bytes != f.bytes || sha != f.sha256 {
                return Err(PublishError::Mismatch {
                    generation: generation.to_string(),
                    file: f.name.clone(),
                    expected: format!("{} bytes, sha256 {}", f.bytes, f.sha256),
                    found: format!("{bytes} bytes, sha256 {sha}"),
                });
            }
        }
        let tmp = tmp.keep();
        crate::fsutil::install_dir(&tmp, dest).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            io_err(dest)(e)
        })
    }

    /// Generation numbers present in the folder (announced or not).
    fn numbers(&self) -> Result<Vec<u64>, PublishError> {
        let root = &self.url.root;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(root).map_err(io_err(root))? {
            let entry = entry.map_err(io_err(root))?;
            if let Some(n) = entry.file_name().to_str().and_then(generation_number) {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Publishes a snapshot of `kb` as the next generation and announces it; returns its name.
    /// Also removes what dead publishers left behind and generations past retention.
    pub fn publish(&self, _lock: &PublishLock, kb: &KnowledgeBase) -> Result<String, PublishError> {
        let root = &self.url.root;
        self.remove_leftovers();
        let last = self.numbers()?.last().copied().unwrap_or(0);
        let current = self
            .current()?
            .and_then(|c| generation_number(&c))
            .unwrap_or(0);
        let name = generation_name(last.max(current) + 1);
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(root)
            .map_err(io_err(root))?;
        let files = kb.snapshot_into(tmp.path())?;
        let mut listed = Vec::with_capacity(files.len());
        for f in files {
            let (bytes, sha256) = hash_file(&tmp.path().join(&f))?;
            listed.push(ManifestFile {
                name: f,
                bytes,
                sha256,
            });
        }
        let manifest = Manifest {
            generation: name.clone(),
            published_at: now_secs(),
            files: listed,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| PublishError::Malformed {
            path: tmp.path().join(MANIFEST_FILE),
            reason: e.to_string(),
        })?;
        let manifest_path = tmp.path().join(MANIFEST_FILE);
        crate::fsutil::write_atomic(&manifest_path, &json).map_err(io_err(&manifest_path))?;
        let tmp = tmp.keep();
        let dest = root.join(&name);
        crate::fsutil::install_dir(&tmp, &dest).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            io_err(&dest)(e)
        })?;
        let current_path = root.join(CURRENT_FILE);
        crate::fsutil::write_atomic(&current_path, format!("{name}\n").as_bytes())
            .map_err(io_err(&current_path))?;
        self.remove_old();
        Ok(name)
    }

    /// `.tmp-` folders: under the lock, no publisher is writing one, so they are a dead
    /// publisher's. Best effort.
    fn remove_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.url.root) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Applies the retention rule of the module documentation. Best effort: a generation that
    /// cannot be removed now is tried again by the next publisher.
    fn remove_old(&self) {
        let Ok(numbers) = self.numbers() else { return };
        let current = self.current().ok().flatten();
        if numbers.len() <= KEEP_GENERATIONS {
            return;
        }
        let old = &numbers[..numbers.len() - KEEP_GENERATIONS];
        for (i, &n) in old.iter().enumerate() {
            let name = generation_name(n);
            if current.as_deref() == Some(name.as_str()) {
                continue;
            }
            let successor = generation_name(numbers[i + 1]);
            let announced = self
                .manifest(&successor)
                .map_or(u64::MAX, |m| m.published_at);
            if announced.saturating_add(DELETE_GRACE.as_secs()) <= now_secs() {
                let _ = std::fs::remove_dir_all(self.url.root.join(name));
            }
        }
    }

    /// Ingests `paths` into a working copy of the latest published generation in `work` (a
    /// folder of the caller's, replaced whole), then publishes the result — all under the
    /// publishers' lock, so concurrent ingests through any worker each build on the other's
    /// generation. When nothing changed, nothing is published and the current generation is
    /// returned.
    pub fn ingest(
        &self,
        work: &Path,
        embedder: Arc<dyn Embedder>,
        options: KbOptions,
        paths: &[PathBuf],
        opts: &IngestOptions,
        observer: &mut dyn IngestObserver,
    ) -> Result<(IngestReport, String), PublishError> {
        let lock = self.lock()?;
        self.ingest_locked(&lock, work, embedder, options, paths, opts, observer)
    }

    /// Publishes `paths` only when nothing is published yet (`memex init --demo` on many
    /// workers): the first worker ingests and publishes, every other adopts its generation.
    pub fn ensure_published(
        &self,
        work: &Path,
        embedder: Arc<dyn Embedder>,
        options: KbOptions,
        paths: &[PathBuf],
    ) -> Result<Ensured, PublishError> {
        let lock = self.lock()?;
        if let Some(current) = self.current()? {
            return Ok(Ensured::Adopted(current));
        }
        let (report, name) = self.ingest_locked(
            &lock,
            work,
            embedder,
            options,
            paths,
            &IngestOptions::default(),
            &mut super::NoProgress,
        )?;
        Ok(Ensured::Published(name, report))
    }

    #[allow(clippy::too_many_arguments)]
    fn ingest_locked(
        &self,
        lock: &PublishLock,
        work: &Path,
        embedder: Arc<dyn Embedder>,
        options: KbOptions,
        paths: &[PathBuf],
        opts: &IngestOptions,
        observer: &mut dyn IngestObserver,
    ) -> Result<(IngestReport, String), PublishError> {
        if work.exists() {
            std::fs::remove_dir_all(work).map_err(io_err(work))?;
        }
        let current = self.current()?;
        match &current {
            Some(generation) => self.fetch(generation, work)?,
            None => std::fs::create_dir_all(work).map_err(io_err(work))?,
        }
        let kb = KnowledgeBase::open_with(work, embedder, options)?;
        let report = kb.ingest_with(paths, opts, observer)?;
        let changed =
            report.files_new + report.files_changed + report.files_pruned + report.chunks_repaired
                > 0;
        let name = match current {
            Some(c) if !changed => c,
            _ => self.publish(lock, &kb)?,
        };
        Ok((report, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kb::SearchMode;

    fn embedder() -> Arc<dyn Embedder> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
        Arc::new(
            crate::embed::MiniLmEmbedder::load(&dir, crate::embed::EmbedderOptions::default())
                .expect("the real model loads (run `memex model fetch` first)"),
        )
    }

    fn shared(dir: &Path) -> SharedKb {
        SharedKb::new(KbUrl::parse(&format!("file://{}", dir.join("shared").display())).unwrap())
    }

    /// Writes `docs/NAME.txt` holding `text` and returns its path.
    fn doc(root: &Path, name: &str, text: &str) -> PathBuf {
        let dir = root.join("docs");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("{name}.txt"));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn ingest(s: &SharedKb, work: &Path, e: &Arc<dyn Embedder>, paths: &[PathBuf]) -> String {
        s.ingest(
            work,
            Arc::clone(e),
            KbOptions::default(),
            paths,
            &IngestOptions::default(),
            &mut crate::kb::NoProgress,
        )
        .unwrap()
        .1
    }

    fn sources(kb: &KnowledgeBase, query: &str) -> Vec<String> {
        kb.search(query, 10, SearchMode::Keyword)
            .unwrap()
            .into_iter()
            .map(|h| h.source)
            .collect()
    }

    #[test]
    fn urls_other_than_absolute_file_folders_are_refused() {
        assert_eq!(
            KbUrl::parse("file:///srv/kb").unwrap().root(),
            Path::new("/srv/kb")
        );
        for bad in [
            "s3://bucket/kb",
            "file://relative/kb",
            "file:///srv/../etc",
            "/srv/kb",
            "file:///",
        ] {
            let e = KbUrl::parse(bad).unwrap_err();
            assert!(matches!(e, PublishError::BadUrl { .. }), "{bad}: {e}");
        }
        assert_eq!(generation_number("gen-000042"), Some(42));
        assert_eq!(generation_number("gen-42"), None);
        assert_eq!(generation_number("gen-000042x"), None);
    }

    #[test]
    fn each_ingest_publishes_on_top_of_the_latest_generation_and_a_copy_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let e = embedder();
        let s = shared(tmp.path());
        assert_eq!(s.current().unwrap(), None);
        let a = doc(tmp.path(), "a", "The zebrafinch refund window is ten days.");
        let b = doc(
            tmp.path(),
            "b",
            "Chargeback quokkaform disputes need evidence.",
        );
        // Two workers' working copies, one after the other: the second starts from the first's
        // generation, so nothing of the first is lost.
        assert_eq!(
            ingest(&s, &tmp.path().join("w1"), &e, std::slice::from_ref(&a)),
            "gen-000001"
        );
        assert_eq!(
            ingest(&s, &tmp.path().join("w2"), &e, std::slice::from_ref(&b)),
            "gen-000002"
        );
        assert_eq!(s.current().unwrap().as_deref(), Some("gen-000002"));
        // Unchanged input publishes nothing new.
        assert_eq!(ingest(&s, &tmp.path().join("w1"), &e, &[b]), "gen-000002");
        let m = s.manifest("gen-000002").unwrap();
        assert!(m
            .files
            .iter()
            .any(|f| f.name == "kb.db" && f.sha256.len() == 64));
        assert!(m.files.iter().any(|f| f.name == "kb.hnsw"));
        let copy = tmp.path().join("copy");
        s.fetch("gen-000002", &copy).unwrap();
        let kb = KnowledgeBase::open(&copy, Arc::clone(&e)).unwrap();
        assert_eq!(
            sources(&kb, "zebrafinch").len(),
            1,
            "the first worker's document"
        );
        assert_eq!(
            sources(&kb, "quokkaform").len(),
            1,
            "the second worker's document"
        );
        assert!(!tmp.path().join("shared").read_dir().unwrap().any(|d| d
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".tmp-")));
    }

    #[test]
    fn a_damaged_generation_is_never_copied_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let e = embedder();
        let s = shared(tmp.path());
        let a = doc(tmp.path(), "a", "Settlement batches close at midnight UTC.");
        let g = ingest(&s, &tmp.path().join("w"), &e, &[a]);
        let db = tmp.path().join("shared").join(&g).join("kb.db");
        let mut bytes = std::fs::read(&db).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&db, bytes).unwrap();
        let dest = tmp.path().join("copy");
        let err = s.fetch(&g, &dest).unwrap_err();
        assert!(
            matches!(err, PublishError::Mismatch { ref file, .. } if file == "kb.db"),
            "{err}"
        );
        assert!(!dest.exists(), "no partial copy left under the final name");
    }

    #[test]
    fn init_on_many_workers_publishes_once_and_the_rest_adopt() {
        let tmp = tempfile::tempdir().unwrap();
        let e = embedder();
        let s = shared(tmp.path());
        let a = doc(tmp.path(), "a", "Payouts are sent every business day.");
        let first = s
            .ensure_published(
                &tmp.path().join("w1"),
                Arc::clone(&e),
                KbOptions::default(),
                std::slice::from_ref(&a),
            )
            .unwrap();
        assert!(
            matches!(first, Ensured::Published(ref g, ref r) if g == "gen-000001" && r.files_new == 1)
        );
        let second = s
            .ensure_published(
                &tmp.path().join("w2"),
                Arc::clone(&e),
                KbOptions::default(),
                &[a],
            )
            .unwrap();
        assert_eq!(second, Ensured::Adopted("gen-000001".into()));
        assert_eq!(s.current().unwrap().as_deref(), Some("gen-000001"));
    }

    #[test]
    fn old_generations_are_removed_only_past_retention_and_grace() {
        let tmp = tempfile::tempdir().unwrap();
        let e = embedder();
        let s = shared(tmp.path());
        let work = tmp.path().join("w");
        for i in 0..4 {
            let p = doc(
                tmp.path(),
                &format!("d{i}"),
                &format!("Document number {i} of four."),
            );
            ingest(&s, &work, &e, &[p]);
        }
        let root = tmp.path().join("shared");
        let names = |root: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(root)
                .unwrap()
                .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("gen-"))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names(&root).len(),
            4,
            "within the grace period nothing is removed"
        );
        // Pretend generations 1 to 4 were announced long ago.
        for n in 1..=4 {
            let g = generation_name(n);
            let mut m = s.manifest(&g).unwrap();
            m.published_at = 0;
            std::fs::write(
                root.join(&g).join(MANIFEST_FILE),
                serde_json::to_vec(&m).unwrap(),
            )
            .unwrap();
        }
        let p = doc(tmp.path(), "d4", "Document number five.");
        assert_eq!(ingest(&s, &work, &e, &[p]), "gen-000005");
        assert_eq!(names(&root), vec!["gen-000003", "gen-000004", "gen-000005"]);
    }

    #[test]
    fn concurrent_publishers_never_share_a_generation_number_nor_lose_documents() {
        let tmp = tempfile::tempdir().unwrap();
        let e = embedder();
        let s = shared(tmp.path());
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let s = s.clone();
                let e = Arc::clone(&e);
                let root = tmp.path().to_path_buf();
                std::thread::spawn(move || {
                    let p = doc(
                        &root,
                        &format!("c{i}"),
                        &format!("Concurrent token tapir{i}x."),
                    );
                    ingest(&s, &root.join(format!("w{i}")), &e, &[p])
                })
            })
            .collect();
        let mut gens: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        gens.sort();
        assert_eq!(gens, vec!["gen-000001", "gen-000002", "gen-000003"]);
        let copy = tmp.path().join("copy");
        s.fetch("gen-000003", &copy).unwrap();
        let kb = KnowledgeBase::open(&copy, e).unwrap();
        for i in 0..3 {
            assert_eq!(sources(&kb, &format!("tapir{i}x")).len(), 1, "tapir{i}x");
        }
    }
}
