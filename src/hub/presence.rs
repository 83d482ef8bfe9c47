//! Presence batches, shared by both brokers: a large room (more than
//! `limits.presence_batch_over` members) hears its joins and leaves as one `presence` event per
//! `limits.presence_batch_ms` instead of one event per change, so a crowd joining costs O(n)
//! frames, not O(n²). Leaves are listed before joins, a join and a leave inside one batch cancel,
//! and past a page of names the rest are only counted.

use std::sync::Arc;

use crate::protocol::Role;

/// A large room's joins and leaves since its last `presence` event, a page of names each at most.
#[derive(Debug, Default)]
pub(crate) struct PresenceBatch {
    pub joined: Vec<(Arc<str>, Role)>,
    pub left: Vec<Arc<str>>,
    /// Changes past a page, counted but not listed.
    pub unlisted: usize,
}

impl PresenceBatch {
    pub fn join(&mut self, name: &Arc<str>, role: Role, page: usize) {
        if self.joined.len() < page {
            self.joined.push((name.clone(), role));
        } else {
            self.unlisted += 1;
        }
    }

    /// A join still in the batch is taken back: the others never heard of it.
    pub fn leave(&mut self, name: &Arc<str>, page: usize) {
        if self.take_back(name) {
            return;
        }
        if self.left.len() < page {
            self.left.push(name.clone());
        } else {
            self.unlisted += 1;
        }
    }

    /// Removes `name`'s join from the batch; false if it holds none.
    pub fn take_back(&mut self, name: &str) -> bool {
        let Some(i) = self.joined.iter().position(|(n, _)| **n == *name) else {
            return false;
        };
        self.joined.remove(i);
        true
    }

    pub fn renamed(&mut self, from: &str, to: &Arc<str>) {
        for (n, _) in self.joined.iter_mut().filter(|(n, _)| **n == *from) {
            *n = to.clone();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty() && self.unlisted == 0
    }
}
