//! Direct I/O for the write-ahead log: appends that bypass the page cache.
//!
//! With buffered writes, each `fdatasync` first makes the kernel find the dirty pages, build and
//! submit their writeback, and wait for it; then it flushes the disk's cache. Written with
//! `O_DIRECT`, the data goes to the disk during `write` itself and `fdatasync` is only the flush.
//! On this project's disk a durable 8 KiB append took ~105–120 µs this way against ~160–185 µs
//! buffered (`dd oflag=direct,dsync` against `oflag=dsync`), and the sync is most of the writer's
//! cycle, which sets the write throughput (BENCHMARKS.md §1).
//!
//! `O_DIRECT` moves whole blocks from block-aligned memory to block-aligned offsets, so
//! [`BlockAppender`] keeps the log's last, partly filled block in memory and writes it again,
//! followed by the new frame and zeros up to the next block boundary. The zeros are what a
//! preallocated segment holds after its last frame anyway (`wal::read_frames`).
//!
//! Only preallocated segments are written this way, and only when zero-filling the spare with
//! `O_DIRECT` worked ([`open_options`] is tried first, buffered second): a filesystem without
//! direct I/O (tmpfs, some network filesystems) keeps the buffered path.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

/// The unit of direct I/O: a multiple of every logical block size in use (512 or 4096 bytes), and
/// of the page size, so both offsets and memory addresses satisfy any device's alignment.
pub const BLOCK: usize = 4096;

/// How a log file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    Direct,
    Buffered,
}

/// Options opening a file for writing in `mode`.
pub fn open_options(mode: IoMode) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true);
    if mode == IoMode::Direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options
}

/// A byte buffer whose contents start at a `BLOCK`-aligned address, in safe code: a plain vector
/// one block longer than needed, used from its first aligned byte. It never reallocates in place;
/// growing copies into a new one, which realigns.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn with_capacity(capacity: usize) -> Self {
        let raw = vec![0u8; capacity + BLOCK];
        // A pointer-to-integer cast, not `align_offset`, whose answer may be "cannot".
        let start = (BLOCK - raw.as_ptr() as usize % BLOCK) % BLOCK;
        Self { raw, start, len: 0 }
    }

    pub fn zeroed(len: usize) -> Self {
        let mut buf = Self::with_capacity(len);
        buf.len = len;
        buf
    }

    fn capacity(&self) -> usize {
        self.raw.len() - BLOCK
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn reserve(&mut self, additional: usize) {
        let needed = self.len + additional;
        if needed > self.capacity() {
            let mut grown = Self::with_capacity(needed.max(2 * self.capacity()));
            grown.raw[grown.start..grown.start + self.len].copy_from_slice(self.as_slice());
            grown.len = self.len;
            *self = grown;
        }
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        let at = self.start + self.len;
        self.raw[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Pad with zeros up to `len` (or cut down to it).
    pub fn resize_zeroed(&mut self, len: usize) {
        if len > self.len {
            self.reserve(len - self.len);
            self.raw[self.start + self.len..self.start + len].fill(0);
        }
        self.len = len;
    }

    /// Keep only `range`, moved to the front.
    fn keep(&mut self, range: std::ops::Range<usize>) {
        let kept = range.len();
        self.as_mut_slice().copy_within(range, 0);
        self.len = kept;
    }
}

/// Appends to a log file opened with `O_DIRECT`, whole blocks at a time.
pub struct BlockAppender {
    /// Between appends: the bytes of the file's last, partly filled block (fewer than `BLOCK`).
    /// During one: that block, the new bytes, and zeros to the next block boundary.
    buf: AlignedBuf,
}

impl Default for BlockAppender {
    fn default() -> Self {
        Self {
            buf: AlignedBuf::with_capacity(64 * 1024),
        }
    }
}

impl BlockAppender {
    /// Write `parts` after the first `len` bytes of `file` (which this appender wrote, starting
    /// from an empty file). Returns with the data handed to the disk (not yet flushed from its
    /// cache: `fdatasync` does that). On failure the file's contents past `len` are unspecified,
    /// and the appender is as it was, so the caller cuts the file back to `len` and carries on.
    pub fn append(&mut self, file: &File, len: u64, parts: &[&[u8]]) -> std::io::Result<()> {
        let kept = self.buf.len();
        debug_assert_eq!(
            kept as u64,
            len % BLOCK as u64,
            "the appender holds the last partial block"
        );
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        let end = self.buf.len();
        self.buf.resize_zeroed(end.next_multiple_of(BLOCK));
        let written = file.write_all_at(self.buf.as_slice(), len - kept as u64);
        if written.is_ok() {
            self.buf.keep(end / BLOCK * BLOCK..end);
        } else {
            self.buf.keep(0..kept);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_start_aligned_and_stay_aligned_as_they_grow() {
        let mut buf = AlignedBuf::with_capacity(10);
        for round in 0..20u8 {
            assert_eq!(buf.as_slice().as_ptr() as usize % BLOCK, 0);
            buf.extend_from_slice(&[round; 1000]);
        }
        assert_eq!(buf.len(), 20_000);
        assert!(buf.as_slice()[..1000].iter().all(|&b| b == 0));
        assert!(buf.as_slice()[19_000..].iter().all(|&b| b == 19));
        buf.resize_zeroed(20_480);
        assert!(buf.as_slice()[20_000..].iter().all(|&b| b == 0));
        buf.keep(4096..4100);
        assert_eq!(buf.as_slice(), &[4, 4, 4, 4]);
    }

    /// Whatever the mode, the file holds exactly the appended bytes, then only zeros.
    #[test]
    fn appends_rewrite_the_partial_block_and_pad_with_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, vec![0u8; 3 * BLOCK]).unwrap();
        let (file, mode) = match open_options(IoMode::Direct).open(&path) {
            Ok(file) => (file, IoMode::Direct),
            // A filesystem without O_DIRECT: the block logic is the same over buffered writes.
            Err(_) => (open_options(IoMode::Buffered).open(&path).unwrap(), IoMode::Buffered),
        };
        let mut appender = BlockAppender::default();
        let mut expected = Vec::new();
        let mut len = 0u64;
        for (i, size) in [10usize, 4086, 1, 5000, 7, 9000].into_iter().enumerate() {
            let head = [i as u8 + 1; 3];
            let body = vec![i as u8 + 100; size];
            let written = appender.append(&file, len, &[&head, &body]);
            if let Err(e) = written {
                panic!("append {i} in {mode:?} mode: {e}");
            }
            expected.extend_from_slice(&head);
            expected.extend_from_slice(&body);
            len = expected.len() as u64;
        }
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..expected.len()], &expected[..]);
        assert!(on_disk[expected.len()..].iter().all(|&b| b == 0));
        assert_eq!(
            on_disk.len() % BLOCK,
            0,
            "the file grew by whole blocks past its preallocation"
        );
    }
}
