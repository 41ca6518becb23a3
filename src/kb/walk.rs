//! Which paths an ingestion reads: the path rules shared by every way documents come in (the
//! CLI today, an HTTP ingest later).
//!
//! * Folders are walked with the `ignore` crate: `.gitignore`, `.ignore` and hidden entries are
//!   skipped, entries are visited in name order.
//! * Symbolic links are never followed by default (files or folders); each one is reported as a
//!   skipped entry. With `follow_symlinks`, a link is followed only when its canonical target
//!   lies inside one of the roots ([`resolve_link`]).
//! * Only regular files are read; FIFOs, sockets and devices are skipped without being opened.
//! * A path that exists but cannot be read (file or folder) is reported with the OS reason and
//!   listed in [`Walk::unreadable`], so that pruning never mistakes it for a deleted one.

use std::collections::HashSet;
use std::fs::FileType;
use std::path::{Path, PathBuf};

use super::loader::{FileKind, SkipReason};

/// Path rules of a walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkOptions {
    /// Follow symbolic links whose canonical target stays inside one of the roots.
    pub follow_symlinks: bool,
}

/// A file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The path as found (a link's own path when it was followed).
    pub path: PathBuf,
    /// The path to open: `path`, or a followed link's canonical target.
    pub target: PathBuf,
}

/// The outcome of walking the roots.
#[derive(Debug, Default)]
pub struct Walk {
    /// Supported regular files, sorted by path, each target once.
    pub files: Vec<Candidate>,
    /// Entries not read, with the reason, in the order found.
    pub skipped: Vec<(PathBuf, SkipReason)>,
    /// Canonical (or, when that fails, as-given) paths that exist but could not be read:
    /// nothing stored from under them may be pruned.
    pub unreadable: Vec<PathBuf>,
}

/// The canonical target of the symbolic link `link` when it lies inside one of `roots` (which
/// must be canonical); otherwise why the link is not followed.
pub fn resolve_link(link: &Path, roots: &[PathBuf]) -> Result<PathBuf, SkipReason> {
    let target = std::fs::canonicalize(link).map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    if roots.iter().any(|r| target.starts_with(r)) {
        Ok(target)
    } else {
        Err(SkipReason::LinkOutside(target))
    }
}

/// What kind of non-regular file `ft` is, for the skip message.
fn special_kind(ft: &FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_socket() {
            return "a socket";
        }
        if ft.is_block_device() || ft.is_char_device() {
            return "a device";
        }
    }
    let _ = ft;
    "a special file"
}

struct Walker {
    opts: WalkOptions,
    roots: Vec<PathBuf>,
    out: Walk,
    seen_dirs: HashSet<PathBuf>,
}

impl Walker {
    fn skip(&mut self, path: &Path, reason: SkipReason) {
        if let SkipReason::Unreadable(_) = reason {
            let key = std::fs::canonicalize(path).unwrap_or_else(|_| absolute(path));
            self.out.unreadable.push(key);
        }
        self.out.skipped.push((path.to_path_buf(), reason));
    }

    fn file(&mut self, path: &Path, target: PathBuf) {
        // Inside folders, unsupported files are passed over silently.
        if FileKind::of(path).is_some() || FileKind::of(&target).is_some() {
            self.out.files.push(Candidate {
                path: path.to_path_buf(),
                target,
            });
        }
    }

    /// A symbolic link met in a walk (or given as a root when following is off).
    fn link(&mut self, path: &Path) {
        if !self.opts.follow_symlinks {
            self.skip(path, SkipReason::Link);
            return;
        }
        match resolve_link(path, &self.roots) {
            Ok(target) => match std::fs::metadata(&target) {
                Ok(m) if m.is_dir() => self.dir(&target),
                Ok(m) if m.is_file() => self.file(path, target),
                Ok(m) => self.skip(
                    path,
                    SkipReason::NotRegular(special_kind(&m.file_type()).into()),
                ),
                Err(e) => self.skip(path, SkipReason::Unreadable(e.to_string())),
            },
            Err(reason) => self.skip(path, reason),
        }
    }

    fn dir(&mut self, dir: &Path) {
        let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| absolute(dir));
        if !self.seen_dirs.insert(canon) {
            return;
        }
        let walk = ignore::WalkBuilder::new(dir)
            .standard_filters(true)
            .hidden(true)
            .parents(false)
            .git_global(false)
            .git_exclude(false)
            .require_git(false)
            .follow_links(false)
            .sort_by_file_name(|a, b| a.cmp(b))
            .build();
        for entry in walk {
            let entry = match entry {
                Ok(e) => e,
                Err(err) => {
                    let (path, reason) = walk_error(&err, dir);
                    self.skip(&path, SkipReason::Unreadable(reason));
                    continue;
                }
            };
            let path = entry.path();
            let Some(ft) = entry.file_type() else {
                continue;
            };
            if ft.is_symlink() {
                self.link(path);
            } else if ft.is_dir() {
                // Descended by the walker itself.
            } else if ft.is_file() {
                self.file(path, path.to_path_buf());
            } else if FileKind::of(path).is_some() {
                self.skip(path, SkipReason::NotRegular(special_kind(&ft).into()));
            }
        }
    }

    fn root(&mut self, root: &Path) {
        let meta = match std::fs::symlink_metadata(root) {
            Ok(m) => m,
            Err(e) => {
                // A missing path is not "unreadable": it protects nothing from pruning.
                let reason = SkipReason::Unreadable(e.to_string());
                if e.kind() == std::io::ErrorKind::NotFound {
                    self.out.skipped.push((root.to_path_buf(), reason));
                } else {
                    self.skip(root, reason);
                }
                return;
            }
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            // A root named on the command line is what the user asked for: resolve it.
            match std::fs::metadata(root) {
                Ok(m) if m.is_dir() => self.dir(root),
                Ok(m) if m.is_file() => self.explicit_file(root),
                Ok(m) => self.skip(
                    root,
                    SkipReason::NotRegular(special_kind(&m.file_type()).into()),
                ),
                Err(e) => self.skip(root, SkipReason::Unreadable(e.to_string())),
            }
        } else if ft.is_dir() {
            self.dir(root);
        } else if ft.is_file() {
            self.explicit_file(root);
        } else {
            self.skip(root, SkipReason::NotRegular(special_kind(&ft).into()));
        }
    }

    fn explicit_file(&mut self, path: &Path) {
        if FileKind::of(path).is_none() {
            self.skip(path, SkipReason::Unsupported);
            return;
        }
        let target = std::fs::canonicalize(path).unwrap_or_else(|_| absolute(path));
        self.out.files.push(Candidate {
            path: path.to_path_buf(),
            target,
        });
    }
}

/// The path and OS reason of a walk error.
fn walk_error(err: &ignore::Error, dir: &Path) -> (PathBuf, String) {
    let mut path = None;
    let mut e = err;
    loop {
        match e {
            ignore::Error::WithPath { path: p, err } => {
                path.get_or_insert_with(|| p.clone());
                e = err;
            }
            ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
                e = err;
            }
            ignore::Error::Partial(errs) if errs.len() == 1 => e = &errs[0],
            _ => break,
        }
    }
    let reason = match e.io_error() {
        Some(io) => io.to_string(),
        None => e.to_string(),
    };
    (path.unwrap_or_else(|| dir.to_path_buf()), reason)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Walks `roots` (files or folders) under the path rules in the module documentation.
pub fn walk(roots: &[PathBuf], opts: WalkOptions) -> Walk {
    let canonical: Vec<PathBuf> = roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .collect();
    let mut w = Walker {
        opts,
        roots: canonical,
        out: Walk::default(),
        seen_dirs: HashSet::new(),
    };
    for root in roots {
        w.root(root);
    }
    let mut files = std::mem::take(&mut w.out.files);
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut targets = HashSet::new();
    files.retain(|c| {
        targets.insert(std::fs::canonicalize(&c.target).unwrap_or_else(|_| c.target.clone()))
    });
    w.out.files = files;
    w.out
}
