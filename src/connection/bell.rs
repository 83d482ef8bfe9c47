//! How a mailbox wakes the one task that reads it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// Wakes one waiting task; a ring with no one waiting is kept for the next wait (as
/// `Notify::notify_one` does, with the waiter's room in the `Bell`, not in the waiting future).
#[derive(Debug, Default)]
pub(super) struct Bell {
    rung: AtomicBool,
    waker: AtomicWaker,
}

impl Bell {
    pub(super) fn ring(&self) {
        self.rung.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once rung since the last time it was; the task behind `cx` is woken by the next ring.
    pub(super) fn poll_rung(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.rung.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A ring between the check and the registration found no waker: it is seen here.
        if self.rung.swap(false, Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_ring_wakes_the_waiting_task_or_waits_for_the_next_wait() {
        let bell = Bell::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        // Rung before anyone waits: kept for the next wait, once.
        bell.ring();
        assert!(bell.poll_rung(&mut cx).is_ready());
        assert!(bell.poll_rung(&mut cx).is_pending());
        // Rung while waiting: the task is woken and the next poll is ready.
        bell.ring();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(bell.poll_rung(&mut cx).is_ready());
        assert!(bell.poll_rung(&mut cx).is_pending());
    }
}
