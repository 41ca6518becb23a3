//! The one atomic file write of memex: every file that must never be seen half-written (index
//! files, benchmark vector sets, model files) goes through [`write_atomic_with`].
//!
//! Steps: a temporary file **beside** the target (same directory, so the rename stays on one
//! file system) with a unique name, the content written, `fsync`, rename over the target,
//! `fsync` of the directory (so the rename itself survives a power cut; best effort where a
//! directory cannot be opened). A reader sees the old file or the new one, never a mix.
//!
//! The temporary name is `.<target name>.<pid>.<random>.tmp`, created with `O_EXCL` by the
//! `tempfile` crate, so two threads of one process (or two processes) writing the same target
//! at once never share a temporary path: each rename installs one complete version and the last
//! one wins. On any failure the temporary file is removed.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` atomically (see the module documentation).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Writes `path` atomically with the content `fill` writes into the temporary file (for content
/// streamed from elsewhere, such as a download or an archive entry). `fill` need not flush or
/// sync; an error from it leaves `path` untouched.
pub fn write_atomic_with<F>(path: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut File) -> io::Result<()>,
{
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.{}.",
            name.to_string_lossy(),
            std::process::id()
        ))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    fill(tmp.as_file_mut())?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir);
    Ok(())
}

/// Installs the fully written directory `tmp` as `dest` (which must not exist): every file in
/// `tmp` is fsynced, then `tmp` itself, then it is renamed to `dest` and the parent fsynced. A
/// reader listing the parent sees no `dest` or a complete one. Both must be on one file system.
pub fn install_dir(tmp: &Path, dest: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(tmp)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(tmp);
    std::fs::rename(tmp, dest)?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// Makes a rename in `dir` durable. Not every platform can open a directory, so best effort.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn many_threads_writing_one_target_all_succeed_and_leave_one_complete_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.bin");
        let threads = 16;
        let rounds = 20;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let path = path.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    for r in 0..rounds {
                        // 64 KiB of one byte value: a mix of two versions would show.
                        let byte = (t * rounds + r) as u8;
                        write_atomic(&path, &vec![byte; 64 * 1024])?;
                    }
                    Ok::<(), io::Error>(())
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 64 * 1024);
        assert!(bytes.iter().all(|&b| b == bytes[0]), "one complete version");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("shared.bin")],
            "no temp left"
        );
    }

    #[test]
    fn a_failing_fill_leaves_the_target_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        write_atomic(&path, b"old").unwrap();
        let e = write_atomic_with(&path, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("source failed"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "source failed");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_atomic(&dir.path().join("no/such/f"), b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
