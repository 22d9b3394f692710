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
                // SAFETY: non-zero size; each block is written, checked and freed once.
                unsafe {
                    let ptr = Allocator.alloc(layout);
                    assert!(!ptr.is_null());
                    assert_eq!(ptr as usize % align, 0, "size {size} align {align}");
                    ptr.write_bytes(0xA5, size);
                    let grown = Allocator.realloc(ptr, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "realloc {size} align {align}");
                    assert!((0..size).all(|i| *grown.add(i) == 0xA5));
                    Allocator.dealloc(grown, Layout::from_size_align_unchecked(size * 3, align));

                    let zeroed = Allocator.alloc_zeroed(layout);
                    assert_eq!(zeroed as usize % align, 0, "zeroed {size} align {align}");
                    assert!((0..size).all(|i| *zeroed.add(i) == 0));
                    Allocator.dealloc(zeroed, layout);
                }
            }
        }
    }
}
