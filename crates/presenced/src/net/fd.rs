//! File descriptors: the soft `RLIMIT_NOFILE` raised at start, and how many of them connections
//! may take.
//!
//! Every connection is a descriptor, and so is every file the store opens (log segments, the
//! spare segment, redb, the data directory) and every webhook delivery's socket. Connections get
//! what is left after a reserve: the descriptors open once the store is up, plus an eighth of the
//! limit (at least 64) for what opens later (new segments, webhook sockets, evicted connections
//! still closing). So a flood of connections meets the connection cap, never `EMFILE` in the
//! store.
use super::config::OpenFiles;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Above this, an unlimited hard limit is not followed (the kernel caps it anyway).
const UNLIMITED_AS: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptors {
    /// The soft limit the server now runs with.
    pub limit: u64,
    /// What it was at start.
    pub was: u64,
    pub hard: u64,
}

/// Set the soft descriptor limit as configured: to the hard limit (`max`), or to a number
/// (capped at the hard limit). A refusal (some sandboxes) leaves the limit as it was.
pub fn apply(target: OpenFiles) -> Descriptors {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let hard = maximum.unwrap_or(UNLIMITED_AS);
    let was = current.unwrap_or(hard);
    let wanted = match target {
        OpenFiles::Max => hard,
        OpenFiles::Limit(n) => n.min(hard),
    };
    if wanted == was {
        return Descriptors { limit: was, was, hard };
    }
    let new = Rlimit {
        current: Some(wanted),
        maximum,
    };
    match setrlimit(Resource::Nofile, new) {
        Ok(()) => Descriptors {
            limit: wanted,
            was,
            hard,
        },
        Err(e) => {
            tracing::warn!(error = %e, wanted, was, "cannot change the open-files limit; keeping it");
            Descriptors { limit: was, was, hard }
        }
    }
}

/// Descriptors open in this process now (Linux: `/proc/self/fd`); `None` where unknown.
pub fn open_now() -> Option<usize> {
    // The directory handle read_dir holds is one of the entries; it closes afterwards.
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count().saturating_sub(1))
}

/// Descriptors kept from connections: those open now (or a guess of 64) plus an eighth of the
/// limit, at least 64.
pub fn reserve(limit: u64, open_now: Option<usize>) -> u64 {
    open_now.unwrap_or(64) as u64 + (limit / 8).max(64)
}

/// The connection cap: the configured one, lowered to what the limit leaves after the reserve
/// (at least 1, so a misconfigured limit still serves someone).
pub fn connection_cap(configured: usize, limit: u64, reserve: u64) -> usize {
    let room = limit.saturating_sub(reserve).max(1);
    (configured as u64).min(room) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve() {
        assert_eq!(reserve(1024, Some(20)), 20 + 128);
        assert_eq!(reserve(256, Some(20)), 20 + 64);
        assert_eq!(connection_cap(10_000, 1 << 20, reserve(1 << 20, Some(20))), 10_000);
        assert_eq!(connection_cap(10_000, 1024, reserve(1024, Some(20))), 1024 - 148);
        assert_eq!(connection_cap(10_000, 256, reserve(256, Some(20))), 256 - 84);
        assert_eq!(connection_cap(10, 64, 1000), 1);
    }

    #[test]
    fn open_descriptors_are_counted() {
        // At least stdin, stdout and stderr.
        assert!(open_now().unwrap() >= 3);
    }
}
