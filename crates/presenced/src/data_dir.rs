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
