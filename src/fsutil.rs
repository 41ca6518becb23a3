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
//!
//! The new file's mode follows the umask like any other tool's (`0666 & !umask`, so `0644`
//! under the usual `022`): a model fetched by root or a generation published by the ingest user
//! stays readable by the service user. (`tempfile` alone would create it `0600`.) memex writes
//! no secrets through here; API keys live hashed in the state store.
//!
//! Reading a file named by a user or by a shared folder goes through [`open_regular`] and
//! [`read_capped`]: only regular files are opened (a FIFO would block, `/dev/zero` never ends),
//! without blocking on a FIFO swapped in after the check, and never more than a bound is read.

use std::fs::File;
use std::io::{self, Read, Write};
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
    let mut builder = tempfile::Builder::new();
    let prefix = format!(".{}.{}.", name.to_string_lossy(), std::process::id());
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        // Created with 0666: the process umask narrows it, as for any file a tool creates.
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir)?;
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

/// Whether [`open_regular`] follows a symbolic link at the path's last component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Follow it (a config file may be a link to a regular file elsewhere).
    Follow,
    /// Refuse it (the files of a published generation are never links).
    Refuse,
}

/// What a path is, in words, for an error saying why it is refused.
fn kind_of(file_type: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

fn not_regular(file_type: std::fs::FileType) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("it is {}, not a regular file", kind_of(file_type)),
    )
}

/// Opens `path` for reading only if it is a regular file (after following a link at its last
/// component with [`Links::Follow`]; refusing one with [`Links::Refuse`]). The type is checked
/// before opening (a FIFO is never opened) and again on the opened file, which is opened
/// non-blocking (and `O_NOFOLLOW` with `Refuse`) so that a FIFO or link swapped in between the
/// two cannot block or redirect the read. A refused path is an `InvalidInput` error saying what
/// it is ("it is a FIFO (named pipe), not a regular file").
pub fn open_regular(path: &Path, links: Links) -> io::Result<File> {
    let meta = match links {
        Links::Follow => std::fs::metadata(path)?,
        Links::Refuse => std::fs::symlink_metadata(path)?,
    };
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let nofollow = match links {
            Links::Follow => 0,
            Links::Refuse => libc::O_NOFOLLOW,
        };
        // Non-blocking: opening a FIFO swapped in after the check returns at once. Reads of a
        // regular file ignore the flag.
        options.custom_flags(libc::O_NONBLOCK | nofollow);
    }
    let file = options.open(path).map_err(|e| {
        #[cfg(unix)]
        if e.raw_os_error() == Some(libc::ELOOP) {
            return io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is a symbolic link, not a regular file",
            );
        }
        e
    })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    Ok(file)
}

/// The error of a file longer than `cap` bytes.
pub fn too_large(cap: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("it is larger than {} (the limit)", human_bytes(cap)),
    )
}

/// `cap` in the largest whole unit: `1 MiB`, `4 KiB`, `17 bytes`.
fn human_bytes(cap: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if cap >= MIB && cap.is_multiple_of(MIB) {
        format!("{} MiB", cap / MIB)
    } else if cap >= 1024 && cap.is_multiple_of(1024) {
        format!("{} KiB", cap / 1024)
    } else {
        format!("{cap} bytes")
    }
}

/// Reads the regular file `path` (see [`open_regular`]) whole, refusing one longer than `cap`
/// bytes: its size is checked first, and at most `cap + 1` bytes are ever read (a file growing
/// while read is refused too).
pub fn read_capped(path: &Path, cap: u64, links: Links) -> io::Result<Vec<u8>> {
    let file = open_regular(path, links)?;
    let len = file.metadata()?.len();
    if len > cap {
        return Err(too_large(cap));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_large(cap));
    }
    Ok(bytes)
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

    #[cfg(unix)]
    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    /// New files follow the umask (0644 under 022), not tempfile's private 0600: a model
    /// fetched by root or a generation published by the ingest user is readable by the
    /// service user.
    #[cfg(unix)]
    #[test]
    fn new_files_follow_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: umask only swaps the process's mask; the previous one is put back.
        let previous = unsafe { libc::umask(0o022) };
        let made = write_atomic(&dir.path().join("a"), b"x");
        let mode = std::fs::metadata(dir.path().join("a")).map(|m| m.permissions().mode());
        unsafe { libc::umask(0o077) };
        let private = write_atomic(&dir.path().join("b"), b"x");
        let narrow = std::fs::metadata(dir.path().join("b")).map(|m| m.permissions().mode());
        unsafe { libc::umask(previous) };
        made.unwrap();
        private.unwrap();
        assert_eq!(mode.unwrap() & 0o777, 0o644);
        assert_eq!(
            narrow.unwrap() & 0o777,
            0o600,
            "a tighter umask is honoured"
        );
    }

    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_read_and_never_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_capped(&file, 5, Links::Refuse).unwrap(), b"12345");
        let e = read_capped(&file, 4, Links::Refuse).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(e.to_string(), "it is larger than 4 bytes (the limit)");
        // A link to a regular file is read when following links, refused otherwise.
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read_capped(&link, 5, Links::Follow).unwrap(), b"12345");
        let e = read_capped(&link, 5, Links::Refuse).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // /dev/zero never ends: refused unread either way.
        let zero = dir.path().join("z");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read_capped(&zero, 1 << 20, Links::Follow).unwrap_err();
        assert_eq!(
            e.to_string(),
            "it is a character device, not a regular file"
        );
        assert!(read_capped(&zero, 1 << 20, Links::Refuse).is_err());
        // A FIFO with no writer would block an open for ever: refused at once.
        let fifo = dir.path().join("p");
        mkfifo(&fifo);
        let started = std::time::Instant::now();
        let e = read_capped(&fifo, 1 << 20, Links::Follow).unwrap_err();
        assert_eq!(
            e.to_string(),
            "it is a FIFO (named pipe), not a regular file"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let e = read_capped(dir.path(), 1 << 20, Links::Follow).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        assert_eq!(
            read_capped(&dir.path().join("none"), 1, Links::Follow)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(human_bytes(1 << 20), "1 MiB");
        assert_eq!(human_bytes(4096), "4 KiB");
    }
}
