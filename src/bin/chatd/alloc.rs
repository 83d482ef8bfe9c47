//! The daemon's allocator: jemalloc, configured (`.cargo/config.toml`) to give freed pages back
//! within a second. With glibc's allocator a burst of 2,000 clients sending 60 KiB messages left
//! RSS at 314 MiB after they all left; with this, 67 MiB, most of it the history the
//! configuration keeps.
//!
//! What jemalloc does not do by itself is empty an idle thread's cache of freed blocks, and those
//! keep whole page runs resident (`chatd::memory` says how much): once most connections have gone,
//! each runtime thread empties its cache when it next goes idle ([`on_park`]).

use std::cell::Cell;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

thread_local! {
    /// The `chatd::memory::release_epoch` this thread last gave its cache back for.
    static RELEASED: Cell<u64> = const { Cell::new(0) };
}

/// For the runtime's `on_thread_park`: gives this thread's cached blocks back to the allocator if
/// most connections have gone since it last did. A thread parks often; this costs one atomic load
/// and a thread-local read unless there is something to give back.
pub(crate) fn on_park() {
    let epoch = chatd::memory::release_epoch();
    if RELEASED.with(|seen| seen.replace(epoch)) != epoch {
        flush_thread_cache();
    }
}

/// jemalloc's `thread.tcache.flush`: the calling thread's cached blocks go back to their arenas,
/// whose background thread then returns empty pages to the system. The daemon's one `unsafe`:
/// jemalloc's control interface is a C function, and no safe wrapper offers this operation.
#[allow(unsafe_code)]
fn flush_thread_cache() {
    // SAFETY: the name is a NUL-terminated C string, and this control reads and writes nothing,
    // so null pointers and zero lengths are what it takes; a failure only returns an error code.
    let failed = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"thread.tcache.flush".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if failed != 0 {
        tracing::debug!(
            code = failed,
            "could not empty the allocator's thread cache"
        );
    }
}
