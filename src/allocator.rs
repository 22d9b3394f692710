//! The global allocator: mimalloc, entered the way std's `System` enters malloc.
//!
//! The `mimalloc` crate hands every request to `mi_malloc_aligned`, even for the alignments
//! plain `malloc` already guarantees. For a block above 1 KiB whose size class is not a power
//! of two (a header map's table, a large boxed future) mimalloc then over-allocates to align it,
//! about 9 times per proxied request. Like std's `System`, this asks for plain `mi_malloc` when
//! the alignment is at most 16 bytes (what `malloc` guarantees on x86-64 and aarch64) and not
//! above the size; every other request goes to `MiMalloc` unchanged.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use mimalloc::MiMalloc;

/// The alignment `malloc` (and so `mi_malloc`) guarantees for a block of at least this size.
const MALLOC_ALIGN: usize = 16;

pub struct Allocator;

/// Whether plain `malloc`/`realloc` of `size` bytes is aligned enough for `align`.
fn malloc_aligns(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes blocks from
// `mi_malloc`, `mi_zalloc`, `mi_realloc` and their aligned variants alike); the plain calls
// are only made where their alignment guarantee covers the layout.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if malloc_aligns(layout.align(), layout.size()) {
            // SAFETY: mimalloc accepts any size.
            unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if malloc_aligns(layout.align(), layout.size()) {
            // SAFETY: as in `alloc`.
            unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if malloc_aligns(layout.align(), new_size) {
            // SAFETY: `ptr` came from mimalloc; the new block is aligned as `malloc`'s are.
            unsafe { libmimalloc_sys::mi_realloc(ptr.cast::<c_void>(), new_size).cast() }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of one layout held at once: a block freed before the next allocation would come
    /// straight back, so only the second and later live blocks of a size class show where
    /// fresh blocks land.
    const LIVE: usize = 4;

    fn aligned(ptr: *mut u8, align: usize) -> bool {
        !ptr.is_null() && (ptr as usize).is_multiple_of(align)
    }

    #[test]
    fn every_block_is_aligned_as_asked_and_keeps_its_bytes() {
        let sizes = (1..=64)
            .chain((65..5000).step_by(37))
            .chain([8192, 12_345, 70_000]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                let grown_layout =
                    Layout::from_size_align(size * 3, align).expect("three times a valid size");
                // SAFETY: non-zero sizes; every block is written and read within its size while
                // live, and freed once with the layout it has then.
                unsafe {
                    let blocks: Vec<*mut u8> = (0..LIVE).map(|_| Allocator.alloc(layout)).collect();
                    let zeroed: Vec<*mut u8> =
                        (0..LIVE).map(|_| Allocator.alloc_zeroed(layout)).collect();
                    for (k, &ptr) in blocks.iter().enumerate() {
                        assert!(aligned(ptr, align), "block {k}: size {size} align {align}");
                        ptr.write_bytes(k as u8 + 1, size);
                    }
                    for (k, &ptr) in zeroed.iter().enumerate() {
                        assert!(aligned(ptr, align), "zeroed {k}: size {size} align {align}");
                        assert!((0..size).all(|i| *ptr.add(i) == 0), "zeroed {k}: {size}");
                    }
                    // Checked only once all are written: no block overlaps another.
                    let grown: Vec<*mut u8> = blocks
                        .into_iter()
                        .enumerate()
                        .map(|(k, ptr)| {
                            assert!((0..size).all(|i| *ptr.add(i) == k as u8 + 1), "block {k}");
                            let grown = Allocator.realloc(ptr, layout, size * 3);
                            assert!(
                                aligned(grown, align),
                                "grown {k}: size {size} align {align}"
                            );
                            assert!((0..size).all(|i| *grown.add(i) == k as u8 + 1), "grown {k}");
                            grown
                        })
                        .collect();
                    for ptr in grown {
                        Allocator.dealloc(ptr, grown_layout);
                    }
                    for ptr in zeroed {
                        Allocator.dealloc(ptr, layout);
                    }
                }
            }
        }
    }
}
