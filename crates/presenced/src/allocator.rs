//! The process allocator: the `mimalloc` crate's, told to keep the memory it frees mapped.
//!
//! Shared by the `presenced` and `bench-scale` binaries (`#[path]`); not part of the library,
//! which forbids `unsafe`.
use std::ffi::{c_int, c_long};

pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its place in mimalloc 3's `mi_option_e`. The bindings name only some
/// options and set none safely; the test below checks this one by its default.
const MI_OPTION_PURGE_DELAY: c_int = 15;

unsafe extern "C" {
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set_default(option: c_int, value: c_long);
}

/// Keep memory the process frees mapped, for its next allocations, instead of returning it to
/// the kernel a second later (mimalloc's default). The store's large buffers and redb's pages
/// are freed and allocated again every few seconds under a write load, and on this project's
/// virtual machine mapping memory afresh (the kernel zeroes every page first) cost 10-60 ms at
/// a time: ~6,000 page faults per 10 s of writes, against ~80 with this (BENCHMARKS.md §1).
/// The process keeps its peak working set. `MIMALLOC_PURGE_DELAY` (or its older name
/// `MIMALLOC_RESET_DELAY`), if set, decides instead: mimalloc's `set_default` yields to an
/// option its environment set.
pub fn keep_freed_memory() {
    // SAFETY: a plain C call with an option number mimalloc knows. It writes a `long` other
    // threads read while freeing, so it is called first thing in `main`, before they exist.
    unsafe { mi_option_set_default(MI_OPTION_PURGE_DELAY, -1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number is mimalloc 3's purge delay: the only option whose default is 1000 (ms),
    /// and the one `keep_freed_memory` turns off (-1, never purge). (nextest runs each test in
    /// its own process, so no other test's threads are allocating meanwhile.)
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        for name in ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"] {
            assert!(
                std::env::var_os(name).is_none(),
                "unset {name} to run this test: it checks mimalloc's own default"
            );
        }
        // SAFETY: plain C calls.
        assert_eq!(
            unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) },
            1000,
            "mimalloc 3's default purge delay"
        );
        keep_freed_memory();
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, -1);
    }
}
