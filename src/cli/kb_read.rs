//! The knowledge base a reading command uses (`search`, `ask`, `chat`, `plan`, `mcp`): the data
//! directory's own, or with `--kb-url` the generation published there.
//!
//! A published generation is copied, verified against its manifest and opened in a private
//! folder `.kb-read-XXXXXX` inside the data directory (see `memex::kb::follow`), never in
//! `kb-gens/`, which a `memex serve` sharing the data directory owns. While the command runs, a
//! background thread swaps in newer generations (a long `chat` or `mcp` session keeps up with
//! ingests) and touches the folder's `alive` file; the folder is removed when the command ends.
//! Folders left by a killed command are removed by the next reader once their `alive` file is
//! older than [`STALE_AFTER`].

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use memex::embed::Embedder;
use memex::kb::follow::Follower;
use memex::kb::{KbOptions, KnowledgeBase};

use super::GlobalArgs;

/// Prefix of the private copies in the data directory.
const PREFIX: &str = ".kb-read-";
/// File touched by the reader holding a copy.
const ALIVE: &str = "alive";
/// How often a reader looks for a newer generation and touches `alive`.
const POLL: Duration = Duration::from_secs(2);
/// A copy whose `alive` file is older than this belongs to a command that is gone.
const STALE_AFTER: Duration = Duration::from_secs(600);

/// The private copies held by this process, removed by [`release`].
static HELD: Mutex<Vec<tempfile::TempDir>> = Mutex::new(Vec::new());

/// Opens the knowledge base the global flags name. `existing_only` (search): with no
/// `--kb-url`, the data directory's knowledge base must exist and nothing is created; with one,
/// a generation must have been published.
pub(super) fn open(
    g: &GlobalArgs,
    embedder: Arc<dyn Embedder>,
    options: KbOptions,
    existing_only: bool,
) -> anyhow::Result<Arc<KnowledgeBase>> {
    let data_dir = g.data_dir();
    let Some(shared) = g.shared_kb()? else {
        let kb = if existing_only {
            KnowledgeBase::open_existing(&data_dir, embedder, options)?
        } else {
            KnowledgeBase::open_with(&data_dir, embedder, options)
                .context("cannot open the knowledge base")?
        };
        return Ok(Arc::new(kb));
    };
    let url = shared.url().to_string();
    if existing_only && shared.current()?.is_none() {
        anyhow::bail!(
            "nothing has been published at {url} yet; run `memex ingest --kb-url {url} PATH` first"
        );
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    sweep_stale(&data_dir);
    let copy = tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir_in(&data_dir)
        .with_context(|| format!("cannot create a folder in {}", data_dir.display()))?;
    touch(copy.path());
    let follower = Follower::open(shared, copy.path(), embedder, options)
        .with_context(|| format!("cannot open the published knowledge base at {url}"))?;
    let follower = Arc::new(follower);
    let kb = Arc::clone(follower.kb());
    let dir = copy.path().to_path_buf();
    memex::sqlite::lock(&HELD).push(copy);
    std::thread::spawn(move || keep_up(&follower, &dir));
    Ok(kb)
}

/// Removes this process's private copies; called once the command is done.
pub(super) fn release() {
    let held: Vec<_> = memex::sqlite::lock(&HELD).drain(..).collect();
    drop(held);
}

/// Every [`POLL`]: touches `alive` and swaps in a newer generation, until the copy is gone.
fn keep_up(follower: &Follower, dir: &Path) {
    loop {
        std::thread::sleep(POLL);
        if !dir.exists() {
            return;
        }
        touch(dir);
        match follower.refresh() {
            Ok(Some(generation)) => tracing::info!(
                target: "memex::kb",
                generation = %generation,
                "reading a newly published knowledge base"
            ),
            Ok(None) => {}
            Err(e) if dir.exists() => tracing::warn!(
                target: "memex::kb",
                error = %e,
                "cannot take the newly published knowledge base; still reading the previous one"
            ),
            Err(_) => return,
        }
    }
}

fn touch(dir: &Path) {
    let _ = std::fs::write(dir.join(ALIVE), b"");
}

/// Removes the copies of commands that are gone. Best effort: a copy that cannot be removed is
/// left for the next reader.
fn sweep_stale(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let path = entry.path();
        // Only real folders: a symlink named like a copy is not followed or removed.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let last = std::fs::metadata(path.join(ALIVE))
            .or_else(|_| std::fs::metadata(&path))
            .and_then(|m| m.modified());
        let stale = last
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_AFTER);
        if stale {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
