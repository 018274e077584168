//! The HS256 secret kept in `<data_dir>/jwt-secret`: generated on first start, read on every later
//! one, never overwritten.
//!
//! The file holds the secret base64-encoded (one line) so an operator can copy it into another
//! tool that mints tokens. Whoever can read it can mint any token, hence mode 0600 from the first
//! byte and a refusal to start when group or others have any access.

use crate::data_dir::{self, PrivateFileError};
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::error::AuthSetupError;
use super::MIN_HS256_SECRET_BYTES;

/// File name of the secret inside the data directory.
pub const SECRET_FILE_NAME: &str = "jwt-secret";

/// Length of a generated secret: the HMAC-SHA256 output size, the RFC 7518 minimum.
const GENERATED_SECRET_BYTES: usize = 32;

/// A secret file is a few dozen bytes; the bound keeps a wrong path from being read whole.
const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// Returns the secret from `<data_dir>/jwt-secret`, creating the data directory (mode 0700) and a
/// fresh random secret (mode 0600) if they do not exist yet.
///
/// An existing file is only ever read: wrong permissions, an empty file or content that is not
/// base64 of at least 32 bytes is an error for the operator to resolve, because replacing it would
/// silently invalidate every token minted so far.
pub fn load_or_create_secret(data_dir: &Path) -> Result<Vec<u8>, AuthSetupError> {
    data_dir::prepare(data_dir).map_err(AuthSetupError::DataDir)?;
    let path = data_dir.join(SECRET_FILE_NAME);
    let raw = match data_dir::read_private(&path, MAX_SECRET_FILE_BYTES).map_err(|e| setup_error(e, &path))? {
        Some(raw) => raw,
        None => {
            let mut secret = vec![0u8; GENERATED_SECRET_BYTES];
            getrandom::fill(&mut secret).map_err(AuthSetupError::Random)?;
            let mut line = STANDARD.encode(&secret);
            line.push('\n');
            data_dir::create_private(data_dir, &path, line.as_bytes(), MAX_SECRET_FILE_BYTES)
                .map_err(|e| setup_error(e, &path))?
        }
    };
    parse(&raw, &path)
}

/// The secret in `path`, which must exist (`--jwt-secret-file`: one file every node of a
/// deployment reads, so a token minted for one is good at all).
pub fn load_secret_file(path: &Path) -> Result<Vec<u8>, AuthSetupError> {
    let raw = data_dir::read_private(path, MAX_SECRET_FILE_BYTES)
        .map_err(|e| setup_error(e, path))?
        .ok_or_else(|| corrupt(path, "no such file"))?;
    parse(&raw, path)
}

/// The secret a file holds: base64 of at least 32 bytes, surrounding white space allowed.
fn parse(raw: &[u8], path: &Path) -> Result<Vec<u8>, AuthSetupError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| corrupt(path, "not base64 text"))?
        .trim();
    if text.is_empty() {
        return Err(corrupt(path, "empty"));
    }
    let secret = STANDARD.decode(text).map_err(|_| corrupt(path, "not base64 text"))?;
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err(corrupt(path, "the decoded secret is shorter than 32 bytes"));
    }
    Ok(secret)
}

fn setup_error(e: PrivateFileError, path: &Path) -> AuthSetupError {
    match e {
        PrivateFileError::Permissions { path, mode } => AuthSetupError::SecretPermissions { path, mode },
        PrivateFileError::NotAFile { .. } => corrupt(path, "not a regular file"),
        PrivateFileError::TooLarge { .. } => corrupt(path, "larger than 4 KiB"),
        PrivateFileError::Io { action, path, source } => AuthSetupError::Io { action, path, source },
        PrivateFileError::Unsafe(e) => AuthSetupError::DataDir(e),
    }
}

fn corrupt(path: &Path, reason: &'static str) -> AuthSetupError {
    AuthSetupError::SecretCorrupt {
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn write_with_mode(path: &Path, content: &[u8], mode: u32) {
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn creates_a_private_secret_once_and_then_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested").join("data");
        let first = load_or_create_secret(&data).unwrap();
        assert_eq!(first.len(), 32);
        let path = data.join(SECRET_FILE_NAME);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&data), 0o700);
        let on_disk = fs::read_to_string(&path).unwrap();
        assert_eq!(STANDARD.decode(on_disk.trim()).unwrap(), first);
        assert_eq!(load_or_create_secret(&data).unwrap(), first);
        // Only the secret remains: the staging file is gone.
        let names: Vec<_> = fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [SECRET_FILE_NAME]);
        // A second data directory gets a different secret.
        assert_ne!(load_or_create_secret(&dir.path().join("other")).unwrap(), first);
    }

    #[test]
    fn accepts_an_operator_provided_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SECRET_FILE_NAME);
        let secret = [7u8; 48];
        write_with_mode(&path, format!("  {}\n\n", STANDARD.encode(secret)).as_bytes(), 0o400);
        assert_eq!(load_or_create_secret(dir.path()).unwrap(), secret);
    }

    #[test]
    fn refuses_a_file_others_can_access_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SECRET_FILE_NAME);
        let content = format!("{}\n", STANDARD.encode([1u8; 32]));
        for bad_mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            write_with_mode(&path, content.as_bytes(), bad_mode);
            match load_or_create_secret(dir.path()) {
                Err(AuthSetupError::SecretPermissions { mode, .. }) => assert_eq!(mode, bad_mode),
                other => panic!("mode {bad_mode:o}: expected SecretPermissions, got {other:?}"),
            }
            assert_eq!(fs::read_to_string(&path).unwrap(), content);
            assert_eq!(mode(&path), bad_mode);
        }
        let err = load_or_create_secret(dir.path()).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn refuses_empty_corrupt_or_short_files_without_touching_them() {
        let short = STANDARD.encode([1u8; 31]);
        let cases: [(&[u8], &str); 6] = [
            (b"", "empty"),
            (b"\n  \n", "empty"),
            (b"not base64 at all!", "not base64"),
            (b"\xff\xfe\x00", "not base64"),
            (short.as_bytes(), "shorter than 32 bytes"),
            (&[b'A'; 5000], "larger than 4 KiB"),
        ];
        for (content, why) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(SECRET_FILE_NAME);
            write_with_mode(&path, content, 0o600);
            match load_or_create_secret(dir.path()) {
                Err(AuthSetupError::SecretCorrupt { reason, .. }) => {
                    assert!(reason.contains(why), "{reason}")
                }
                other => panic!("{why}: expected SecretCorrupt, got {other:?}"),
            }
            assert_eq!(fs::read(&path).unwrap(), content, "{why}: file was modified");
        }
    }

    #[test]
    fn losing_the_creation_race_adopts_the_winners_secret() {
        // Another process links its secret in between our failed open and our link: ours must
        // not replace it, and the winner's bytes are returned.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SECRET_FILE_NAME);
        let winner = [9u8; 32];
        write_with_mode(&path, STANDARD.encode(winner).as_bytes(), 0o600);
        let held = data_dir::create_private(dir.path(), &path, b"ours", MAX_SECRET_FILE_BYTES).unwrap();
        assert_eq!(parse(&held, &path).unwrap(), winner);
        assert_eq!(fs::read_to_string(&path).unwrap(), STANDARD.encode(winner));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [SECRET_FILE_NAME]);
    }

    #[test]
    fn refuses_a_directory_in_place_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(SECRET_FILE_NAME)).unwrap();
        fs::set_permissions(dir.path().join(SECRET_FILE_NAME), fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(
            load_or_create_secret(dir.path()),
            Err(AuthSetupError::SecretCorrupt {
                reason: "not a regular file",
                ..
            })
        ));
    }

    #[test]
    fn reports_a_data_dir_that_cannot_be_created() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        assert!(matches!(
            load_or_create_secret(&blocker.join("data")),
            Err(AuthSetupError::DataDir(crate::data_dir::UnsafeDataDir::Io { .. }))
        ));
    }

    #[test]
    fn refuses_a_secret_behind_a_symlink_or_owned_by_another_user() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("planted");
        write_with_mode(&elsewhere, STANDARD.encode([7u8; 32]).as_bytes(), 0o600);
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, data.join(SECRET_FILE_NAME)).unwrap();
        assert!(load_or_create_secret(&data).is_err(), "a symlink is not followed");
        fs::remove_file(data.join(SECRET_FILE_NAME)).unwrap();
        // Another owner (only root can hand a file over; elsewhere this part is moot).
        if crate::data_dir::my_uid().unwrap() == 0 {
            let path = data.join(SECRET_FILE_NAME);
            write_with_mode(&path, STANDARD.encode([7u8; 32]).as_bytes(), 0o600);
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            assert!(matches!(
                load_or_create_secret(&data),
                Err(AuthSetupError::DataDir(
                    crate::data_dir::UnsafeDataDir::ForeignOwner { .. }
                ))
            ));
        }
    }
}
