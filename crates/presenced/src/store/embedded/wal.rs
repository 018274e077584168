//! The write-ahead log: what makes a group commit durable with one small sequential write.
//!
//! redb's copy-on-write B-tree turns N random updates into N dirty pages, so fsyncing it per
//! batch made durable writes cost ~10 ms per commit. Instead each batch is appended to the log
//! as one checksummed frame and `fdatasync`ed (a sequential write of a few KB). The log is a
//! series of numbered segments (`presence.wal.<n>`): the writer appends to the newest, and a
//! full or old segment is closed and handed to a background checkpoint that writes its contents
//! to redb; it is deleted once a synced redb commit covers it ([`disk`](super::disk)). After a
//! crash, redb is at its last synced commit and replaying the remaining segments in order
//! (idempotent: frames hold whole values and explicit ids) brings it to the last acknowledged
//! batch.
//!
//! Frame: magic `PWAL` (4 bytes) · payload length (u32 LE) · CRC-32 of the payload (u32 LE) · payload.
//!
//! Segments are preallocated when they can be: a new segment is a renamed *spare*, a file filled
//! with zeros and synced in the background ([`prepare_spare`]). Frames then overwrite zeros
//! instead of growing the file, so an `fdatasync` need not also write the inode's new size (one
//! device request of three). On this project's disk that took a loaded sync from ~357 to ~252 µs
//! and a write's CPU down ~9%, for ~9% more writes per second at 64 connections (BENCHMARKS.md
//! §1). A segment's end is therefore the first frame not followed by any valid one, not the
//! file's length (see [`read_frames`]).
//!
//! Segments and spares are created 0600 and never through a symlink (`crate::data_dir`).
use crate::data_dir;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The name of the first log file, before segments were numbered; read as segment 0.
pub const FILE_NAME: &str = "presence.wal";
/// The preallocated file the next segment is made from. Not named like a segment, so neither
/// replay nor anything that lists segments ever reads it.
pub const SPARE_NAME: &str = "presence.spare-log";
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

/// The path of segment `seq` in `dir`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    if seq == 0 {
        dir.join(FILE_NAME)
    } else {
        dir.join(format!("{FILE_NAME}.{seq:010}"))
    }
}

/// Every segment in `dir`, oldest first.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let seq = if name == FILE_NAME {
            Some(0)
        } else {
            name.strip_prefix(FILE_NAME)
                .and_then(|rest| rest.strip_prefix('.'))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
        };
        if let Some(seq) = seq {
            found.push((seq, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Bytes held by all segments: what a crash would replay.
pub fn total_size(dir: &Path) -> u64 {
    segments(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Make a directory entry (a created, renamed or deleted file) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Fill a new spare with `bytes` zeros and make it durable, replacing any older spare. Only a
/// spare this process prepared is used: one left by a crash could hold blocks that never reached
/// the disk, and this filesystem may show such blocks with stale contents instead of zeros.
pub fn prepare_spare(dir: &Path, bytes: u64) -> std::io::Result<()> {
    let path = dir.join(SPARE_NAME);
    // Removed, then created anew (`O_EXCL`): never written through whatever sits at the name.
    remove_spare(dir)?;
    let mut file = data_dir::create_new(&path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// Delete a spare left by an earlier process (see [`prepare_spare`] for why it is not used).
pub fn remove_spare(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(SPARE_NAME)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The segment the writer appends to.
pub struct Wal {
    file: File,
    path: PathBuf,
    seq: u64,
    /// Bytes of frames written; the file may be longer (zeros, when preallocated).
    len: u64,
    /// A copy of every frame appended, as the file holds them: the checkpoint works from this
    /// instead of reading the segment back, a read that queued in front of the log's flushes.
    /// It never grows past the buffer it was given ([`Wal::keep_frames_in`]): `None` without a
    /// buffer or once a frame did not fit, and the checkpoint reads the file instead.
    frames: Option<Vec<u8>>,
}

impl Wal {
    /// Create segment `seq` and make its directory entry durable before anything is acknowledged
    /// from it: an fdatasync'd frame in a file whose name a crash could lose would be lost too.
    pub fn create(dir: &Path, seq: u64) -> std::io::Result<Wal> {
        let path = segment_path(dir, seq);
        // Numbers only grow, so the file must be new (`O_EXCL`).
        let file = data_dir::create_new(&path)?;
        sync_dir(dir)?;
        Ok(Wal {
            file,
            path,
            seq,
            len: 0,
            frames: None,
        })
    }

    /// Make segment `seq` from the spare [`prepare_spare`] made durable in this process (the
    /// rename is made durable before anything is acknowledged from the segment, as in `create`).
    pub fn from_spare(dir: &Path, seq: u64) -> std::io::Result<Wal> {
        let path = segment_path(dir, seq);
        std::fs::rename(dir.join(SPARE_NAME), &path)?;
        sync_dir(dir)?;
        let file = data_dir::open_write(&path)?;
        Ok(Wal {
            file,
            path,
            seq,
            len: 0,
            frames: None,
        })
    }

    /// Keep the copy of the frames in `buffer`'s memory (its contents are discarded), and only
    /// while they fit in its capacity: growing the copy on the writer thread maps fresh memory,
    /// which the kernel zeroes first, and on this project's virtual machine that stalled every
    /// write for 10-100 ms at a time while a load ramped up. The checkpoint thread prepares the
    /// buffer instead (`disk`); without one (capacity 0), the segment keeps no copy, nor does a
    /// segment never given one. Only an empty segment takes one: the copy must hold every frame.
    pub fn keep_frames_in(&mut self, mut buffer: Vec<u8>) {
        if self.is_empty() {
            buffer.clear();
            self.frames = Some(buffer);
        }
    }

    /// Take the copy of the frames appended so far, byte for byte what the file holds before its
    /// end ([`parse_frames`] reads it); `None` if the segment was given no buffer or outgrew it.
    /// Later appends keep none.
    pub fn take_frames(&mut self) -> Option<Vec<u8>> {
        self.frames.take()
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append one frame; with `sync`, wait until it is on stable storage. On failure the file is
    /// cut back to where it was, so a half-written frame can never sit in front of later ones.
    /// Unsynced frames become durable with the next synced one (or are lost with a crash, which
    /// callers accept by asking for no sync).
    pub fn append(&mut self, payload: &[u8], sync: bool) -> std::io::Result<()> {
        let len = u32::try_from(payload.len())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "batch too large for one frame"))?;
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&MAGIC);
        header[4..8].copy_from_slice(&len.to_le_bytes());
        header[8..].copy_from_slice(&crc32(payload).to_le_bytes());
        // Header and payload in one vectored write: no copy of the payload into a frame buffer.
        let mut written = write_both(&mut self.file, &header, payload);
        if sync {
            written = written.and_then(|()| self.file.sync_data());
        }
        match written {
            Ok(()) => {
                self.len += (HEADER + payload.len()) as u64;
                match &mut self.frames {
                    Some(frames) if frames.len() + HEADER + payload.len() <= frames.capacity() => {
                        frames.extend_from_slice(&header);
                        frames.extend_from_slice(payload);
                    }
                    _ => self.frames = None,
                }
                Ok(())
            }
            Err(e) => {
                self.cut_back();
                Err(e)
            }
        }
    }

    /// Drop whatever a failed append left after the last complete frame, and write the next one
    /// there. This also drops a preallocated segment's zeros: it then grows as it is written,
    /// which is correct, only slower.
    fn cut_back(&mut self) {
        let _ = self.file.set_len(self.len);
        let _ = self.file.seek(SeekFrom::Start(self.len));
    }
}

/// Write `a` then `b`, finishing a short vectored write with plain writes.
fn write_both(file: &mut File, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    let n = file.write_vectored(&[std::io::IoSlice::new(a), std::io::IoSlice::new(b)])?;
    if n < a.len() {
        file.write_all(&a[n..])?;
        file.write_all(b)
    } else {
        file.write_all(&b[n - a.len()..])
    }
}

/// A segment read into memory: its bytes and where each complete frame's payload lies.
#[derive(Debug, Default)]
pub struct Segment {
    bytes: Vec<u8>,
    payloads: Vec<std::ops::Range<usize>>,
}

impl Segment {
    /// The payloads, in order, borrowed from the segment (a checkpoint reads tens of MB; copying
    /// each frame out again showed in profiles).
    pub fn frames(&self) -> impl Iterator<Item = &[u8]> {
        self.payloads.iter().map(|r| &self.bytes[r.clone()])
    }

    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    /// Bytes of complete frames: the segment's length without a preallocated file's zeros.
    pub fn bytes_used(&self) -> usize {
        self.payloads.last().map_or(0, |last| last.end)
    }

    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    /// The memory the segment was read into, for the next [`read_frames_into`].
    pub fn into_buffer(self) -> Vec<u8> {
        self.bytes
    }
}

/// Every complete frame in one segment, in order. The log ends at the first frame that is not
/// valid if no valid frame follows it: that is either the zeros of a preallocated segment or a
/// frame torn by a crash mid-append (never acknowledged, as its sync did not return). An invalid
/// frame with a valid one after it is damage, and an error.
pub fn read_frames(path: &Path) -> Result<Segment, WalError> {
    read_frames_into(path, Vec::new())
}

/// [`read_frames`], reading into `buffer`'s memory (its contents are discarded).
pub fn read_frames_into(path: &Path, mut buffer: Vec<u8>) -> Result<Segment, WalError> {
    let io = |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    };
    buffer.clear();
    // `read_to_end` reserves from the file's length: at most one allocation, none when the
    // buffer already has the room.
    let read = data_dir::open_read(path).and_then(|mut file| file.read_to_end(&mut buffer));
    match read {
        Ok(_) => parse_frames(path, buffer),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Segment::default()),
        Err(e) => Err(io(e)),
    }
}

/// The frames in `bytes`, the contents of the segment at `path` (named in errors), by the rules
/// of [`read_frames`].
pub fn parse_frames(path: &Path, bytes: Vec<u8>) -> Result<Segment, WalError> {
    let mut payloads = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let corrupt = |reason| WalError::Corrupt {
            path: path.to_path_buf(),
            offset: at as u64,
            reason,
        };
        match frame_at(&bytes, at) {
            Ok(payload) => {
                payloads.push(payload.clone());
                at = payload.end;
            }
            Err(_) if is_zero(&bytes[at..]) || !valid_frame_after(&bytes, at) => break,
            Err(reason) => return Err(corrupt(reason)),
        }
    }
    Ok(Segment { bytes, payloads })
}

/// The payload range of the valid frame starting at `at`, or why there is none.
fn frame_at(bytes: &[u8], at: usize) -> Result<std::ops::Range<usize>, &'static str> {
    let rest = &bytes[at..];
    if rest.len() < HEADER {
        return Err("truncated frame header");
    }
    if rest[..4] != MAGIC {
        return Err("bad frame marker");
    }
    let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
    let crc = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
    let Some(payload) = rest.get(HEADER..HEADER + len) else {
        return Err("frame runs past the end of the file");
    };
    if crc32(payload) != crc {
        return Err("checksum mismatch");
    }
    Ok(at + HEADER..at + HEADER + len)
}

/// Whether every byte is zero: the unwritten rest of a preallocated segment (the common case,
/// checked first because it is much cheaper than looking for frames).
fn is_zero(bytes: &[u8]) -> bool {
    let (chunks, tail) = bytes.as_chunks::<16>();
    chunks.iter().all(|c| u128::from_ne_bytes(*c) == 0) && tail.iter().all(|&b| b == 0)
}

/// Whether a valid frame starts anywhere after `at` (only asked once, where the log seems to end).
fn valid_frame_after(bytes: &[u8], at: usize) -> bool {
    (at + 1..bytes.len().saturating_sub(HEADER - 1))
        .filter(|&i| bytes[i..i + 4] == MAGIC)
        .any(|i| frame_at(bytes, i).is_ok())
}

/// CRC-32 (IEEE): a checksum for torn and flipped frames, not a security measure.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each frame's payload, owned.
    fn owned_frames(segment: Segment) -> Vec<Vec<u8>> {
        segment.frames().map(<[u8]>::to_vec).collect()
    }

    /// A new segment keeping its copy in a buffer of `capacity`, and where that buffer's memory is.
    fn with_buffer(dir: &Path, capacity: usize) -> (Wal, *const u8) {
        let mut wal = Wal::create(dir, 1).unwrap();
        let buffer = Vec::with_capacity(capacity);
        let memory = buffer.as_ptr();
        wal.keep_frames_in(buffer);
        (wal, memory)
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn frames_roundtrip_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        wal.append(b"first", true).unwrap();
        wal.append(b"second", false).unwrap();
        let path = wal.path().to_path_buf();
        let frames = owned_frames(read_frames(&path).unwrap());
        assert_eq!(frames, vec![b"first".to_vec(), b"second".to_vec()]);
        // A crash in the middle of a third append.
        let mut bytes = std::fs::read(&path).unwrap();
        let full = bytes.len();
        bytes.extend_from_slice(b"PWAL\x10\x00\x00\x00\x00\x00\x00\x00par");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_frames(&path).unwrap().len(), 2);
        bytes.truncate(full + 5);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_frames(&path).unwrap().len(), 2);
    }

    #[test]
    fn damage_before_the_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        wal.append(b"first", true).unwrap();
        wal.append(b"second", true).unwrap();
        let mut bytes = std::fs::read(wal.path()).unwrap();
        bytes[HEADER + 1] ^= 0x40; // inside the first payload
        std::fs::write(wal.path(), &bytes).unwrap();
        assert!(matches!(
            read_frames(wal.path()),
            Err(WalError::Corrupt { offset: 0, .. })
        ));
    }

    /// A segment made from a spare of `bytes` zeros, holding `frames`.
    fn preallocated(dir: &Path, bytes: u64, frames: &[&[u8]]) -> Wal {
        prepare_spare(dir, bytes).unwrap();
        let mut wal = Wal::from_spare(dir, 3).unwrap();
        wal.keep_frames_in(Vec::with_capacity(1 << 20));
        for frame in frames {
            wal.append(frame, true).unwrap();
        }
        wal
    }

    #[test]
    fn a_preallocated_segment_is_written_in_place_and_ends_where_the_zeros_start() {
        {
            let dir = tempfile::tempdir().unwrap();
            let wal = preallocated(dir.path(), 64 * 1024, &[b"first", b"second"]);
            assert!(!dir.path().join(SPARE_NAME).exists(), "the spare became the segment");
            assert_eq!(
                std::fs::metadata(wal.path()).unwrap().len(),
                64 * 1024,
                "frames overwrite zeros; the file does not grow (so an fdatasync need not write its size)"
            );
            let frames = owned_frames(read_frames(wal.path()).unwrap());
            assert_eq!(frames, vec![b"first".to_vec(), b"second".to_vec()]);
        }
    }

    /// Frames of every size, across block boundaries and past the preallocated end, read back whole.
    #[test]
    fn frames_of_any_size_read_back_whole() {
        {
            let dir = tempfile::tempdir().unwrap();
            let sizes = [1usize, 4083, 4084, 4085, 9000, 12, 20_000, 3];
            let payloads: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect())
                .collect();
            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            let wal = preallocated(dir.path(), 16 * 1024, &refs);
            let expected: u64 = sizes.iter().map(|n| (HEADER + n) as u64).sum();
            assert_eq!(wal.len(), expected);
            let frames = owned_frames(read_frames(wal.path()).unwrap());
            assert_eq!(frames, payloads);
            // The copy the checkpoint works from holds the same frames.
            let mut wal = wal;
            let frames = wal.take_frames().unwrap();
            let kept = owned_frames(parse_frames(wal.path(), frames).unwrap());
            assert_eq!(kept, payloads, "the kept copy");
        }
    }

    #[test]
    fn the_kept_copy_holds_only_appends_that_succeeded_and_reuses_the_buffer_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, memory) = with_buffer(dir.path(), 1 << 16);
        wal.append(b"first", true).unwrap();
        // An append that fails (here: the file is swapped for a read-only handle) adds nothing.
        let read_only = File::open(wal.path()).unwrap();
        let writable = std::mem::replace(&mut wal.file, read_only);
        assert!(wal.append(b"lost", true).is_err());
        wal.file = writable;
        wal.append(b"second", false).unwrap();
        let kept = wal.take_frames().unwrap();
        assert_eq!(kept.as_ptr(), memory, "written into the given buffer");
        let kept = owned_frames(parse_frames(Path::new("kept"), kept).unwrap());
        assert_eq!(kept, vec![b"first".to_vec(), b"second".to_vec()]);
        assert!(wal.take_frames().is_none(), "taken once");
    }

    #[test]
    fn the_copy_never_grows_past_its_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, memory) = with_buffer(dir.path(), 1 << 20);
        let payload = vec![7u8; 4096];
        let mut appended = 0;
        while wal.len() as usize + HEADER + payload.len() <= 1 << 20 {
            wal.append(&payload, false).unwrap();
            appended += 1;
        }
        let kept = wal.frames.as_ref().expect("kept while it fits");
        assert_eq!(
            (kept.as_ptr(), kept.len()),
            (memory, wal.len() as usize),
            "in the given memory"
        );
        wal.append(&payload, false).unwrap();
        assert!(wal.take_frames().is_none(), "the checkpoint will read the file instead");
        assert_eq!(read_frames(wal.path()).unwrap().len(), appended + 1);
    }

    #[test]
    fn without_a_buffer_or_given_one_late_a_segment_keeps_no_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        wal.keep_frames_in(Vec::new());
        wal.append(b"first", true).unwrap();
        assert!(wal.take_frames().is_none(), "no room at all");
        let mut late = Wal::create(dir.path(), 2).unwrap();
        late.append(b"first", true).unwrap();
        late.keep_frames_in(Vec::with_capacity(1 << 16));
        late.append(b"second", true).unwrap();
        assert!(
            late.take_frames().is_none(),
            "a copy without the first frame would lose it"
        );
        assert_eq!(read_frames(late.path()).unwrap().len(), 2);
    }

    #[test]
    fn a_torn_frame_before_the_zeros_is_dropped_but_damage_before_a_valid_frame_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let wal = preallocated(dir.path(), 64 * 1024, &[b"first", b"second"]);
        let path = wal.path().to_path_buf();
        let end = 2 * HEADER + 11;
        // A crash in the middle of a third append: its header and part of its payload.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[end..end + 15].copy_from_slice(b"PWAL\x10\x00\x00\x00\x01\x02\x03\x04par");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_frames(&path).unwrap().len(), 2);
        // Damage inside the first frame, with a valid one after it.
        bytes[HEADER + 1] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_frames(&path), Err(WalError::Corrupt { offset: 0, .. })));
    }

    #[test]
    fn after_a_failed_append_the_next_frame_follows_the_last_complete_one() {
        use std::os::unix::fs::FileExt;
        {
            let dir = tempfile::tempdir().unwrap();
            let mut wal = preallocated(dir.path(), 64 * 1024, &[b"first"]);
            // A write that failed halfway (a full disk, say) left part of a frame behind.
            let other = std::fs::OpenOptions::new().write(true).open(wal.path()).unwrap();
            other.write_all_at(b"PWAL\x10\x00\x00\x00half", wal.len()).unwrap();
            other.sync_all().unwrap();
            wal.cut_back();
            wal.append(b"second", true).unwrap();
            let frames = owned_frames(read_frames(wal.path()).unwrap());
            assert_eq!(frames, vec![b"first".to_vec(), b"second".to_vec()]);
            let grows_to = wal.len();
            assert_eq!(
                std::fs::metadata(wal.path()).unwrap().len(),
                grows_to,
                "the zeros went with the cut; the segment now grows as written"
            );
        }
    }

    #[test]
    fn segments_are_listed_oldest_first_including_the_unnumbered_first_log() {
        let dir = tempfile::tempdir().unwrap();
        for seq in [12, 3, 0] {
            Wal::create(dir.path(), seq).unwrap();
        }
        std::fs::write(dir.path().join("presence.wal.tmp"), b"").unwrap();
        std::fs::write(dir.path().join("presence.redb"), b"").unwrap();
        let seqs: Vec<u64> = segments(dir.path()).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(seqs, vec![0, 3, 12]);
    }
}
