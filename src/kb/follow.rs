//! A worker's copy of the published knowledge base (`memex serve --kb-url`): follows `CURRENT`,
//! copies each new generation into the data directory (`kb-gens/gen-…/`), verifies it against
//! its manifest, opens it and swaps it in ([`KnowledgeBase::swap_in`]); ingests go through the
//! shared folder ([`SharedKb::ingest`]) and are swapped in here at once.
//!
//! The local copies: the generation served and the one served before it are kept (a call
//! still running on the old one finishes there); older ones are deleted at the next swap.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::publish::{generation_number, PublishError, SharedKb};
use super::{IngestOptions, IngestReport, KbOptions, KnowledgeBase, NoProgress};
use crate::embed::Embedder;

/// Folder of the local copies of generations, inside the data directory.
pub const GENS_DIR: &str = "kb-gens";
/// Folder of the working copy an ingest builds the next generation in.
pub const WORK_DIR: &str = "kb-work";
/// Folder of the empty knowledge base served before anything is published.
const EMPTY_DIR: &str = "empty";

/// A worker's view of the shared knowledge base.
#[derive(Debug)]
pub struct Follower {
    shared: SharedKb,
    gens_dir: PathBuf,
    work_dir: PathBuf,
    kb: Arc<KnowledgeBase>,
    /// One swap (or ingest-then-swap) at a time.
    swap: Mutex<Option<String>>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Follower {
    /// Starts following `shared` in `data_dir`: the local copies left by an earlier run are
    /// removed, the current generation (if any) is copied, verified and opened. When the
    /// copy fails (a damaged generation) an empty knowledge base is served and
    /// [`Follower::refresh`] tries again.
    pub fn open(
        shared: SharedKb,
        data_dir: &Path,
        embedder: Arc<dyn Embedder>,
        options: KbOptions,
    ) -> Result<Self, PublishError> {
        let gens_dir = data_dir.join(GENS_DIR);
        if gens_dir.exists() {
            std::fs::remove_dir_all(&gens_dir).map_err(io_err(&gens_dir))?;
        }
        std::fs::create_dir_all(&gens_dir).map_err(io_err(&gens_dir))?;
        let mut served = None;
        let kb = match shared.current()? {
            Some(generation) => {
                let dest = gens_dir.join(&generation);
                match shared.fetch(&generation, &dest) {
                    Ok(()) => {
                        let kb = KnowledgeBase::open_with(&dest, embedder, options)?;
                        kb.set_published(&generation);
                        served = Some(generation);
                        kb
                    }
                    Err(e) => {
                        tracing::warn!(
                            target: "memex::kb",
                            "cannot copy the published knowledge base {generation}: {e}; serving an empty one until a good generation is published"
                        );
                        KnowledgeBase::open_with(&gens_dir.join(EMPTY_DIR), embedder, options)?
                    }
                }
            }
            None => KnowledgeBase::open_with(&gens_dir.join(EMPTY_DIR), embedder, options)?,
        };
        Ok(Follower {
            shared,
            work_dir: data_dir.join(WORK_DIR),
            gens_dir,
            kb: Arc::new(kb),
            swap: Mutex::new(served),
        })
    }

    /// The knowledge base served (its content follows the published generations).
    pub fn kb(&self) -> &Arc<KnowledgeBase> {
        &self.kb
    }

    /// The shared folder.
    pub fn shared(&self) -> &SharedKb {
        &self.shared
    }

    /// Checks `CURRENT`; when it names a newer generation than the one served, copies it,
    /// verifies it, opens it and swaps it in. Returns the generation swapped in, if any. On
    /// an error nothing changes: the old generation keeps being served.
    pub fn refresh(&self) -> Result<Option<String>, PublishError> {
        let mut served = crate::sqlite::lock(&self.swap);
        let Some(current) = self.shared.current()? else {
            return Ok(None);
        };
        let newer = match served.as_deref().and_then(generation_number) {
            Some(n) => generation_number(&current).is_some_and(|c| c > n),
            None => true,
        };
        if !newer {
            return Ok(None);
        }
        let dest = self.gens_dir.join(&current);
        if dest.exists() {
            // A copy from a run that failed before serving it: never trusted, made again.
            std::fs::remove_dir_all(&dest).map_err(io_err(&dest))?;
        }
        if let Err(e) = self.shared.fetch(&current, &dest) {
            let _ = std::fs::remove_dir_all(&dest);
            return Err(e);
        }
        self.kb.swap_in(&dest, &current)?;
        let previous = served.replace(current.clone());
        self.remove_local(&current, previous.as_deref());
        Ok(Some(current))
    }

    /// Local copies other than `keep` and `previous` (and the empty knowledge base once a
    /// generation is served). Best effort.
    fn remove_local(&self, keep: &str, previous: Option<&str>) {
        let Ok(entries) = std::fs::read_dir(&self.gens_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == keep || Some(name.as_str()) == previous {
                continue;
            }
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }

    /// Ingests `paths` into the next published generation (see [`SharedKb::ingest`]) and
    /// serves it here at once; returns the report and the generation now published.
    pub fn ingest(
        &self,
        paths: &[PathBuf],
        opts: &IngestOptions,
    ) -> Result<(IngestReport, String), PublishError> {
        let (report, generation) = self.shared.ingest(
            &self.work_dir,
            Arc::clone(self.kb.embedder()),
            self.kb.options().clone(),
            paths,
            opts,
            &mut NoProgress,
        )?;
        self.refresh()?;
        Ok((report, generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kb::publish::KbUrl;
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
    fn a_follower_swaps_only_to_announced_complete_generations() {
        let tmp = tempfile::tempdir().unwrap();
        let e = embedder();
        let s = shared(tmp.path());
        let data = tmp.path().join("worker");
        let f = Follower::open(s.clone(), &data, Arc::clone(&e), KbOptions::default()).unwrap();
        assert_eq!(f.kb().published_generation(), None);
        assert!(sources(f.kb(), "marmosetcode").is_empty());
        assert_eq!(f.refresh().unwrap(), None, "nothing published yet");
        let a = doc(
            tmp.path(),
            "a",
            "Error marmosetcode means the card expired.",
        );
        let g = ingest(&s, &tmp.path().join("w"), &e, &[a]);
        // A generation folder nobody announced (a publisher that died before CURRENT) is
        // never served.
        let stray = tmp.path().join("shared").join("gen-000009");
        std::fs::create_dir_all(&stray).unwrap();
        std::fs::write(stray.join("kb.db"), b"half").unwrap();
        let held = Arc::clone(f.kb());
        assert_eq!(f.refresh().unwrap(), Some(g.clone()));
        assert_eq!(f.kb().published_generation(), Some(g.clone()));
        assert_eq!(
            sources(&held, "marmosetcode").len(),
            1,
            "the same handle sees the swap"
        );
        assert_eq!(f.refresh().unwrap(), None);
        // CURRENT naming a damaged generation: the follower keeps serving the good one.
        let g2 = ingest(
            &s,
            &tmp.path().join("w"),
            &e,
            &[doc(tmp.path(), "b", "Ocelotline payouts.")],
        );
        let db = tmp.path().join("shared").join(&g2).join("kb.db");
        std::fs::write(&db, b"not the published bytes").unwrap();
        assert!(f.refresh().is_err());
        assert_eq!(f.kb().published_generation(), Some(g));
        assert_eq!(sources(f.kb(), "marmosetcode").len(), 1);
        // A restarted worker starts from the current good generation, or from empty.
        drop(f);
        let again = Follower::open(s, &data, e, KbOptions::default()).unwrap();
        assert_eq!(
            again.kb().published_generation(),
            None,
            "damaged current is not served"
        );
    }

    /// Replaces `gen`'s `kb.db` in the shared folder by what `make` puts at the path, points
    /// `CURRENT` at `gen`, and checks that a refresh fails at once, naming the file, copying
    /// nothing big and leaving no partial copy behind.
    #[cfg(unix)]
    fn refused_at_once(f: &Follower, root: &Path, gen: &str, make: impl FnOnce(&Path)) -> String {
        let db = root.join(gen).join("kb.db");
        std::fs::remove_file(&db).unwrap();
        make(&db);
        std::fs::write(root.join("CURRENT"), format!("{gen}\n")).unwrap();
        let started = std::time::Instant::now();
        let err = f.refresh().expect_err("a damaged generation is refused");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "refused in {:?}",
            started.elapsed()
        );
        let mut local = 0u64;
        for e in walk(&f.gens_dir) {
            local += std::fs::symlink_metadata(&e).map_or(0, |m| m.len());
            assert!(
                !e.to_string_lossy().contains(".fetch-"),
                "a partial copy was left: {}",
                e.display()
            );
        }
        assert!(local < 64 << 20, "the local copies hold {local} bytes");
        err.to_string()
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
        out
    }

    #[cfg(unix)]
    #[test]
    fn links_fifos_and_oversized_files_are_refused_at_once_and_the_follower_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        let e = embedder();
        let s = shared(tmp.path());
        let root = tmp.path().join("shared");
        let work = tmp.path().join("w");
        let g1 = ingest(
            &s,
            &work,
            &e,
            &[doc(tmp.path(), "a", "Error quollcode: expired.")],
        );
        let f = Follower::open(
            s.clone(),
            &tmp.path().join("worker"),
            Arc::clone(&e),
            KbOptions::default(),
        )
        .unwrap();
        assert_eq!(f.kb().published_generation(), Some(g1.clone()));

        // A link to /dev/zero: before the fix the copy never ended (gigabytes written).
        let g2 = ingest(
            &s,
            &work,
            &e,
            &[doc(tmp.path(), "b", "Numbatline payouts.")],
        );
        let err = refused_at_once(&f, &root, &g2, |db| {
            std::os::unix::fs::symlink("/dev/zero", db).unwrap()
        });
        assert!(
            err.contains("kb.db") && err.contains("symbolic link"),
            "{err}"
        );
        // A FIFO: before the fix the open blocked for ever.
        let err = refused_at_once(&f, &root, &g2, |db| {
            let c = std::ffi::CString::new(db.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        });
        assert!(err.contains("FIFO"), "{err}");
        // A sparse file of 64 GiB: never copied.
        let err = refused_at_once(&f, &root, &g2, |db| {
            std::fs::File::create(db)
                .unwrap()
                .set_len(64 << 30)
                .unwrap()
        });
        assert!(err.contains("does not match its manifest"), "{err}");
        assert_eq!(
            f.kb().published_generation(),
            Some(g1.clone()),
            "still serving"
        );
        assert_eq!(sources(f.kb(), "quollcode").len(), 1);

        // CURRENT restored: nothing to do, the good generation keeps being served.
        std::fs::write(root.join("CURRENT"), format!("{g1}\n")).unwrap();
        assert_eq!(f.refresh().unwrap(), None);
        // A worker started while CURRENT named the damaged generation serves nothing, then
        // takes the good one at the next poll once CURRENT names it again.
        std::fs::write(root.join("CURRENT"), format!("{g2}\n")).unwrap();
        let late = Follower::open(
            s.clone(),
            &tmp.path().join("late"),
            Arc::clone(&e),
            KbOptions::default(),
        )
        .unwrap();
        assert_eq!(late.kb().published_generation(), None);
        std::fs::write(root.join("CURRENT"), format!("{g1}\n")).unwrap();
        assert_eq!(late.refresh().unwrap(), Some(g1.clone()));
        assert_eq!(sources(late.kb(), "quollcode").len(), 1);
        // CURRENT moving on to a new good generation is followed.
        let g3 = ingest(
            &s,
            &work,
            &e,
            &[doc(tmp.path(), "c", "Error dibblercode: declined.")],
        );
        assert_eq!(f.refresh().unwrap(), Some(g3.clone()));
        assert_eq!(sources(f.kb(), "dibblercode").len(), 1);
    }
}
