//! The component's allocator: a bump allocator over linear memory.
//!
//! The host runs every review in a fresh instance and throws its memory away afterwards, so the
//! work a general allocator does to reuse freed memory is wasted here: allocating is a pointer
//! bump, freeing gives back only the latest allocation (and growing it happens in place), and
//! memory grows in large steps. An instance that allocates past the host's memory cap fails as
//! before, with `memory.grow` refused. Not for the Kubewarden build: waPC hosts keep one instance
//! for many requests.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::Cell;

const PAGE: usize = 64 * 1024;
/// Pages asked for at a time: a typical review then grows memory once or not at all.
const STEP_PAGES: usize = 16;

pub struct Bump {
    /// The first free byte, and the end of memory; both 0 until the first allocation.
    next: Cell<usize>,
    end: Cell<usize>,
}

// SAFETY: a component instance runs one thread.
unsafe impl Sync for Bump {}

impl Bump {
    pub const fn new() -> Self {
        Self {
            next: Cell::new(0),
            end: Cell::new(0),
        }
    }

    /// Makes `[start, start + size)` free memory, growing memory if needed; false when it cannot.
    fn reserve(&self, start: usize, size: usize) -> bool {
        let Some(wanted) = start.checked_add(size) else {
            return false;
        };
        if wanted <= self.end.get() {
            return true;
        }
        let pages = (wanted - self.end.get()).div_ceil(PAGE).max(STEP_PAGES);
        if wasm32::memory_grow(0, pages) == usize::MAX {
            return false;
        }
        self.end.set(wasm32::memory_size(0) * PAGE);
        true
    }

    fn start(&self) {
        unsafe extern "C" {
            /// Where the linker put the end of static data and the stack.
            static __heap_base: u8;
        }
        if self.end.get() == 0 {
            // Taking the address of the linker's symbol reads nothing, so it needs no `unsafe`.
            self.next.set(&raw const __heap_base as usize);
            self.end.set(wasm32::memory_size(0) * PAGE);
        }
    }
}

impl Default for Bump {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.start();
        let start = self.next.get().next_multiple_of(layout.align());
        if !self.reserve(start, layout.size()) {
            return core::ptr::null_mut();
        }
        self.next.set(start + layout.size());
        start as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ptr as usize + layout.size() == self.next.get() {
            self.next.set(ptr as usize);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let start = ptr as usize;
        if start + layout.size() == self.next.get() {
            // The latest allocation grows or shrinks where it is.
            if !self.reserve(start, new_size) {
                return core::ptr::null_mut();
            }
            self.next.set(start + new_size);
            return ptr;
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: the caller's layout is valid, and so is the same alignment with `new_size`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least `layout.size()` long.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size()) };
        }
        new
    }
}
