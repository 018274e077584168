//! The write-ahead log: what makes a group commit durable with one small sequential write.
//!
//! redb's copy-on-write B-tree turns N random updates into N dirty pages, so fsyncing it per
//! batch made durable writes cost ~10 ms per commit. Instead each batch is appended here as one
//! checksummed frame and `fdatasync`ed (a sequential write of a few KB), while redb takes the same
//! batch as a non-durable commit. Every few seconds a checkpoint makes redb durable and empties
//! the log. After a crash, redb is back at its last checkpoint and replaying the log (idempotent:
//! frames hold whole values and explicit ids) brings it to the last acknowledged batch.
//!
//! Frame: magic `PWAL` (4 bytes) · payload length (u32 LE) · CRC-32 of the payload (u32 LE) · payload.
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "presence.wal";
const MAGIC: [u8; 4] = *b"PWAL";
const HEADER: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("cannot read the write-ahead log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the write-ahead log {path} is corrupt at byte {offset} ({reason}), before its end; refusing to guess what was acknowledged")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
}

pub struct Wal {
    file: File,
    len: u64,
}

impl Wal {
    pub fn open(dir: &Path) -> std::io::Result<Wal> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(dir.join(FILE_NAME))?;
        let len = file.metadata()?.len();
        Ok(Wal { file, len })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append one frame and wait until it is on stable storage. On failure the file is cut back
    /// to where it was, so a half-written frame can never sit in front of later ones.
    pub fn append(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(payload.len())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "batch too large for one frame"))?;
        let mut frame = Vec::with_capacity(HEADER + payload.len());
        frame.extend_from_slice(&MAGIC);
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&crc32(payload).to_le_bytes());
        frame.extend_from_slice(payload);
        let written = self.file.write_all(&frame).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += frame.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }

    /// Empty the log once its contents are durable elsewhere (after a checkpoint).
    pub fn reset(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.len = 0;
        Ok(())
    }
}

/// Every complete frame in the log, in order. A torn frame at the very end (a crash mid-append,
/// never acknowledged) is dropped; damage anywhere before the end is an error.
pub fn read_frames(dir: &Path) -> Result<Vec<Vec<u8>>, WalError> {
    let path = dir.join(FILE_NAME);
    let io = |source| WalError::Io {
        path: path.clone(),
        source,
    };
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(io)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut frames = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let corrupt = |reason| WalError::Corrupt {
            path: path.clone(),
            offset: at as u64,
            reason,
        };
        let rest = &bytes[at..];
        if rest.len() < HEADER {
            break; // torn header at the tail
        }
        if rest[..4] != MAGIC {
            return Err(corrupt("bad frame marker"));
        }
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let crc = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
        let Some(payload) = rest.get(HEADER..HEADER + len) else {
            break; // torn payload at the tail
        };
        if crc32(payload) != crc {
            // The last frame may be torn mid-payload with a stale length; anything earlier is damage.
            if at + HEADER + len == bytes.len() {
                break;
            }
            return Err(corrupt("checksum mismatch"));
        }
        frames.push(payload.to_vec());
        at += HEADER + len;
    }
    Ok(frames)
}

/// CRC-32 (IEEE), table-driven: a checksum for torn and flipped frames, not a security measure.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn frames_roundtrip_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path()).unwrap();
        wal.append(b"first").unwrap();
        wal.append(b"second").unwrap();
        assert_eq!(
            read_frames(dir.path()).unwrap(),
            vec![b"first".to_vec(), b"second".to_vec()]
        );
        // A crash in the middle of a third append.
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let full = bytes.len();
        bytes.extend_from_slice(b"PWAL\x10\x00\x00\x00\x00\x00\x00\x00par");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_frames(dir.path()).unwrap().len(), 2);
        bytes.truncate(full + 5);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_frames(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn damage_before_the_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path()).unwrap();
        wal.append(b"first").unwrap();
        wal.append(b"second").unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 1] ^= 0x40; // inside the first payload
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_frames(dir.path()),
            Err(WalError::Corrupt { offset: 0, .. })
        ));
        wal.reset().unwrap();
        assert!(read_frames(dir.path()).unwrap().is_empty());
    }
}
