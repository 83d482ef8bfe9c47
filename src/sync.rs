//! Taking a lock whatever a panicking holder left. Every update made under chatd's locks is a
//! single insert, remove or replace, so the data stays usable after a panic elsewhere, and the
//! chat goes on instead of every later caller panicking too. The one place that says so: nothing
//! else calls `Mutex::lock` or `RwLock::read`/`write` directly (`scripts/check-layout.py`).

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `m`, locked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `l`, locked for reading.
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// `l`, locked for writing.
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Waits on `c` for at most `limit`, with `guard`'s lock (`Condvar::wait_timeout`).
pub(crate) fn wait_timeout<'a, T>(
    c: &std::sync::Condvar,
    guard: MutexGuard<'a, T>,
    limit: std::time::Duration,
) -> MutexGuard<'a, T> {
    c.wait_timeout(guard, limit)
        .unwrap_or_else(|p| p.into_inner())
        .0
}
