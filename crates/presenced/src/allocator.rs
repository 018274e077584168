//! The process allocator: mimalloc, asked for alignment only when an allocation needs it.
//!
//! Why not `mimalloc::MiMalloc` as it is: it passes every request to `mi_malloc_aligned`, even
//! the ~30 small allocations of an ordinary write whose alignment plain `mi_malloc` already
//! gives. mimalloc's aligned entry point first probes for a suitably aligned free block, ~116
//! instructions a call; asking only when needed took a write from 52,156 to 51,073 instructions
//! (BENCHMARKS.md §1). This is the rule the standard library's own `System` allocator uses with
//! `malloc`.
//!
//! Shared by the `presenced` and `bench-scale` binaries (`#[path]`); not part of the library,
//! which forbids `unsafe`.
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::{c_int, c_long, c_void};

/// `mi_option_purge_delay`: its place in mimalloc 3's `mi_option_e` (the bindings crate names
/// only some options; the test below checks this one by its default).
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
/// The process keeps its peak working set. `MIMALLOC_PURGE_DELAY`, if set, decides instead:
/// mimalloc's `set_default` yields to an option its environment set.
pub fn keep_freed_memory() {
    // SAFETY: a plain C call with an option number mimalloc knows. It writes a `long` other
    // threads read while freeing, so it is called first thing in `main`, before they exist.
    unsafe { mi_option_set_default(MI_OPTION_PURGE_DELAY, -1) }
}

/// What `mi_malloc` guarantees without being asked: blocks of 16 bytes or more are 16-aligned
/// (`MI_MAX_ALIGN_SIZE`, malloc's `max_align_t`), smaller ones are 8-aligned (mimalloc's
/// smallest size class is 8 bytes).
const NATURAL_ALIGN: usize = 16;

/// True when `mi_malloc(size)` is already aligned enough for `align`: every block is 8-aligned,
/// and with `align == 16 <= size` the block is 16 bytes or more, so 16-aligned.
fn natural(size: usize, align: usize) -> bool {
    align <= NATURAL_ALIGN && align <= size
}

pub struct MiMalloc;

/// `plain(size)` where that is aligned enough, else `aligned(size, align)`: one of mimalloc's
/// allocating pairs (`mi_malloc`/`mi_malloc_aligned`, `mi_zalloc`/`mi_zalloc_aligned`).
///
/// # Safety
/// As `GlobalAlloc::alloc`: `layout` has a non-zero size.
#[inline(always)]
unsafe fn allocate(
    layout: Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    // SAFETY: both are mimalloc allocation functions, safe for any size and power-of-two alignment.
    unsafe {
        if natural(layout.size(), layout.align()) {
            plain(layout.size()) as *mut u8
        } else {
            aligned(layout.size(), layout.align()) as *mut u8
        }
    }
}

// SAFETY: every method forwards to mimalloc's malloc family, which upholds the `GlobalAlloc`
// contract; `natural` only picks the unaligned entry point where its guaranteed alignment
// already satisfies the layout, and frees go through `mi_free`, which accepts both.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C allocation calls; `layout` is valid by the caller's contract.
        unsafe { allocate(layout, libmimalloc_sys::mi_malloc, libmimalloc_sys::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe { allocate(layout, libmimalloc_sys::mi_zalloc, libmimalloc_sys::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (caller's contract), so from mimalloc.
        unsafe { libmimalloc_sys::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (caller's contract); the new
        // block keeps `layout.align()`, by `natural` or by asking for it.
        unsafe {
            if natural(new_size, layout.align()) {
                libmimalloc_sys::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                libmimalloc_sys::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
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

    /// Sizes around mimalloc's size classes, including ones that are not multiples of the
    /// alignment asked for (a valid `Layout`, and where a class's stride breaks a larger alignment).
    #[rustfmt::skip]
    const SIZES: [usize; 19] = [1, 2, 3, 4, 7, 8, 12, 16, 24, 40, 48, 72, 96, 100, 192, 1000, 5000, 70_000, 3 << 20];

    /// Every layout a program can ask for, small and large, comes back aligned as asked, through
    /// whichever entry point `natural` picks, and survives growing and shrinking. Many blocks of
    /// each layout are held at once: one block can be aligned by luck, a page full of them not.
    #[test]
    fn every_allocation_is_aligned_as_its_layout_asks() {
        let allocator = MiMalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in SIZES {
                let layout = Layout::from_size_align(size, align).unwrap();
                let count = if size > 1 << 16 { 4 } else { 64 };
                unsafe {
                    let blocks: Vec<*mut u8> = (0..count).map(|_| allocator.alloc(layout)).collect();
                    for &p in &blocks {
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "alloc size {size} align {align}");
                        p.write_bytes(0xAB, size);
                    }
                    for p in blocks {
                        let grown = allocator.realloc(p, layout, size * 3);
                        assert_eq!(grown as usize % align, 0, "realloc up size {size} align {align}");
                        assert_eq!(*grown.add(size - 1), 0xAB, "realloc keeps the contents");
                        let tripled = Layout::from_size_align(size * 3, align).unwrap();
                        let odd = allocator.realloc(grown, tripled, size * 3 + 8);
                        assert_eq!(odd as usize % align, 0, "realloc to an odd size, align {align}");
                        let odd_layout = Layout::from_size_align(size * 3 + 8, align).unwrap();
                        let shrunk = allocator.realloc(odd, odd_layout, align);
                        assert_eq!(shrunk as usize % align, 0, "realloc down to {align} align {align}");
                        assert_eq!(*shrunk, 0xAB);
                        allocator.dealloc(shrunk, Layout::from_size_align(align, align).unwrap());
                    }
                    let zeroed: Vec<*mut u8> = (0..count).map(|_| allocator.alloc_zeroed(layout)).collect();
                    for z in zeroed {
                        assert_eq!(z as usize % align, 0, "alloc_zeroed size {size} align {align}");
                        assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                        allocator.dealloc(z, layout);
                    }
                }
            }
        }
    }
}
