//! The data directory nobody else can touch: how its files are created and opened, and what is
//! refused at start.
//!
//! Whoever can write into the directory could otherwise plant a symlink that makes the server
//! overwrite any file it can write, or a `jwt-secret` that mints tokens the server accepts. So:
//! - the directory is created 0700, and an existing one must belong to the server's user and not
//!   be writable by group or others;
//! - files are created 0600 (at creation, never by a later chmod), never through a symlink
//!   (`O_NOFOLLOW`), and with `O_EXCL` where a file must be new;
//! - a secret or key must belong to the server's user and be readable by it alone.
use std::fs::{DirBuilder, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UnsafeDataDir {
    #[error("cannot create or inspect the data directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the data directory {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} belongs to uid {owner}, not to the server's user (uid {me}); run `chown {me} {path}` (or start the server as its owner)")]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("the data directory {path} can be written by group or others (mode {mode:o}); run `chmod go-w {path}` (0700 is best)")]
    Writable { path: PathBuf, mode: u32 },
}

/// The effective user id of this process: the owner of `/proc/self` (no `unsafe` call needed).
pub fn my_uid() -> io::Result<u32> {
    std::fs::metadata("/proc/self").map(|m| m.uid())
}

/// Create the data directory (0700) if it is missing; refuse one that is not this user's or that
/// group or others can write.
pub fn prepare(dir: &Path) -> Result<(), UnsafeDataDir> {
    let io = |source| UnsafeDataDir::Io {
        path: dir.to_owned(),
        source,
    };
    DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    let meta = std::fs::metadata(dir).map_err(io)?;
    if !meta.is_dir() {
        return Err(UnsafeDataDir::NotADirectory { path: dir.to_owned() });
    }
    owned_by_me(dir, &meta)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(UnsafeDataDir::Writable {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Refuse a file (or directory) that another user owns.
pub fn owned_by_me(path: &Path, meta: &Metadata) -> Result<(), UnsafeDataDir> {
    let me = my_uid().map_err(|source| UnsafeDataDir::Io {
        path: path.to_owned(),
        source,
    })?;
    if meta.uid() != me {
        return Err(UnsafeDataDir::ForeignOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

/// Options that never follow a symlink at the last component and create files 0600.
pub fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    options
}

/// Create a file that must not exist yet (`O_EXCL`), for writing.
pub fn create_new(path: &Path) -> io::Result<File> {
    options().write(true).create_new(true).open(path)
}

/// Open a file for reading and writing, creating it (empty) if missing; never truncates.
pub fn open_or_create(path: &Path) -> io::Result<File> {
    options().read(true).write(true).create(true).truncate(false).open(path)
}

/// Open an existing file for reading.
pub fn open_read(path: &Path) -> io::Result<File> {
    options().read(true).open(path)
}

/// Open an existing file for writing.
pub fn open_write(path: &Path) -> io::Result<File> {
    options().write(true).open(path)
}

/// Why a private file (a secret or a key) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is accessible by group or others (mode {mode:03o}); run `chmod 600 {}`", path.display(), path.display())]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{} is larger than {max} bytes", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error(transparent)]
    Unsafe(#[from] UnsafeDataDir),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PrivateFileError {
    let path = path.to_owned();
    move |source| PrivateFileError::Io { action, path, source }
}

/// The contents of the private file at `path` (at most `max` bytes), or `None` if there is none.
/// It must be a regular file (not reached through a symlink), owned by this user and accessible
/// to it alone: a secret someone else could write could be one they chose.
pub fn read_private(path: &Path, max: u64) -> Result<Option<Vec<u8>>, PrivateFileError> {
    use std::io::Read;
    let file = match open_read(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("open", path)(e)),
    };
    let meta = file.metadata().map_err(io_error("inspect", path))?;
    if !meta.is_file() {
        return Err(PrivateFileError::NotAFile { path: path.to_owned() });
    }
    owned_by_me(path, &meta)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PrivateFileError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut raw = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut raw)
        .map_err(io_error("read", path))?;
    if raw.len() as u64 > max {
        return Err(PrivateFileError::TooLarge {
            path: path.to_owned(),
            max,
        });
    }
    Ok(Some(raw))
}

/// Create the private file `path` in `dir` holding `contents`, whole or not at all: written to a
/// private temporary name, then hard-linked into place, so a crash never leaves half a secret
/// and two processes starting at once agree on one. Returns what the file holds: `contents`, or
/// the other process's if it won (read with [`read_private`]'s checks).
pub fn create_private(dir: &Path, path: &Path, contents: &[u8], max: u64) -> Result<Vec<u8>, PrivateFileError> {
    use std::io::Write;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| io_error("name a temporary file for", path)(io::Error::other(e)))?;
    let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("private");
    let tmp = dir.join(format!(".{name}.{hex}.tmp"));
    let written = create_new(&tmp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    // The temporary name is only a staging area; failing to remove it loses nothing (it is 0600).
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            // The new directory entry is durable: a crash cannot lose what was handed out.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error("sync", dir))?;
            Ok(contents.to_vec())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            read_private(path, max)?.ok_or_else(|| io_error("read", path)(io::ErrorKind::NotFound.into()))
        }
        Err(e) => Err(io_error("create", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn new_directories_and_files_are_private_and_symlinks_are_not_followed() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("data");
        prepare(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let file = dir.join("f");
        drop(create_new(&file).unwrap());
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(create_new(&file).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        let target = temp.path().join("victim");
        fs::write(&target, b"keep me").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_or_create(&link).is_err());
        assert!(open_read(&link).is_err());
        assert!(open_write(&link).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep me");
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("data");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o775)).unwrap();
        assert!(matches!(
            prepare(&dir),
            Err(UnsafeDataDir::Writable { mode: 0o775, .. })
        ));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&dir).unwrap();
    }
}
