//! The one way replidb writes a file that must survive a crash.
//!
//! The only IO in this crate, kept here so every crate uses the same
//! mechanism rather than each getting a step wrong (a missing directory
//! fsync loses a rename on power failure; `File::create` truncates a file
//! that already holds data):
//!
//! - [`write_atomic`] replaces a whole file: write a temporary file beside
//!   it, fsync it, rename it over the target, fsync the directory. A crash
//!   leaves the old contents or the new, never a mix or nothing.
//! - [`DurableAppend`] adds to a file: open without truncating (create if
//!   absent), append, then [`DurableAppend::finish`] fsyncs the file and
//!   the directory. A crash may leave a partial last write, never loses
//!   earlier ones.
//!
//! Segment files of the WAL keep their own appender (they are preallocated
//! by header and fsynced per group commit), and create themselves with
//! [`write_atomic`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Suffix of the temporary file [`write_atomic`] writes first.
pub const TMP_SUFFIX: &str = ".tmp";

/// fsync the directory `dir`, so that entries created, renamed or removed
/// in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The temporary path [`write_atomic`] uses for `path`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TMP_SUFFIX);
    path.with_file_name(name)
}

/// Replace `path` with `bytes` atomically and durably: temporary file,
/// fsync, rename, directory fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    {
        // Truncating the temporary file is right: it is ours alone, and a
        // leftover from a crash is garbage.
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(parent_of(path))
}

/// An append-only file opened without truncation. Call
/// [`DurableAppend::finish`] to make what was written durable.
#[derive(Debug)]
pub struct DurableAppend {
    file: File,
    path: PathBuf,
}

impl DurableAppend {
    /// Open `path` for appending, creating it (and not truncating it) if
    /// needed.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().append(true).create(true).open(path)?;
        Ok(DurableAppend {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Append `bytes` (not yet durable).
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    /// fsync the file, then its directory (the file may be new).
    pub fn finish(self) -> io::Result<()> {
        self.file.sync_all()?;
        sync_dir(parent_of(&self.path))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("replidb-durable-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = scratch("atomic");
        let p = dir.join("meta.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!tmp_path(&p).exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn append_never_truncates_an_existing_file() {
        let dir = scratch("append");
        let p = dir.join("rollback.jsonl");
        let mut a = DurableAppend::open(&p).unwrap();
        a.append(b"first\n").unwrap();
        a.finish().unwrap();
        // Opening the same name again (a retried rewind) keeps what is there.
        let mut b = DurableAppend::open(&p).unwrap();
        b.append(b"second\n").unwrap();
        b.finish().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first\nsecond\n");
        fs::remove_dir_all(dir).unwrap();
    }
}
