//! The data directory, attacked by whoever can write into it, with the real binary: a
//! group-writable directory, a planted symlink and a secret owned by another user each stop the
//! server at start with a message saying how to fix it, and nothing outside is touched.
mod common;

use common::*;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

/// A data directory the server made and stopped cleanly in.
fn prepared() -> (tempfile::TempDir, std::path::PathBuf) {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let mut server = Server::start_in(&dir, &[]);
    assert!(server.terminate().success());
    (temp, dir)
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_data_directory_others_can_write_is_refused() {
    let (_temp, dir) = prepared();
    chmod(&dir, 0o775);
    let (status, stderr) = start_expecting_failure(&dir);
    assert!(!status.success());
    assert!(
        stderr.contains("chmod go-w"),
        "the message says how to fix it: {stderr}"
    );
    // Fixed as told, it starts.
    chmod(&dir, 0o700);
    let mut server = Server::start_in(&dir, &[]);
    assert!(server.terminate().success());
}

#[test]
fn a_planted_symlink_is_never_followed() {
    let (temp, dir) = prepared();
    let victim = temp.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::remove_file(dir.join("presence.redb")).unwrap();
    symlink(&victim, dir.join("presence.redb")).unwrap();
    let (status, stderr) = start_expecting_failure(&dir);
    assert!(!status.success());
    assert!(stderr.contains("presence.redb"), "the message names the file: {stderr}");
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"precious",
        "the target was not written"
    );

    // The token secret behind a symlink would let whoever planted it choose the key.
    let (temp, dir) = prepared();
    let planted = temp.path().join("planted-secret");
    std::fs::write(&planted, [7u8; 64]).unwrap();
    chmod(&planted, 0o600);
    std::fs::remove_file(dir.join("jwt-secret")).unwrap();
    symlink(&planted, dir.join("jwt-secret")).unwrap();
    let (status, stderr) = start_expecting_failure(&dir);
    assert!(!status.success());
    assert!(stderr.contains("jwt-secret"), "{stderr}");
}

#[test]
fn a_secret_owned_by_another_user_is_refused() {
    let (_temp, dir) = prepared();
    let secret = dir.join("jwt-secret");
    // Needs root to give the file away (CI runs as root).
    let chown = std::process::Command::new("chown").arg("65534").arg(&secret).status();
    assert!(
        chown.is_ok_and(|s| s.success()),
        "this test gives the secret to uid 65534 with chown and needs root (CI runs as root)"
    );
    let (status, stderr) = start_expecting_failure(&dir);
    assert!(!status.success());
    assert!(stderr.contains("uid 65534") && stderr.contains("chown"), "{stderr}");
}
