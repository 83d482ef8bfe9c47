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

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Arc<str> {
        Arc::from(n)
    }

    #[test]
    fn a_join_and_a_leave_inside_one_batch_cancel() {
        let mut b = PresenceBatch::default();
        b.join(&name("ann"), Role::User, 10);
        b.leave(&name("ann"), 10);
        assert!(b.is_empty(), "nobody heard of ann: {b:?}");
        b.leave(&name("bob"), 10);
        assert_eq!(
            b.left,
            [name("bob")],
            "a leave of someone announced earlier stays"
        );
    }

    #[test]
    fn past_a_page_changes_are_counted_not_listed() {
        let mut b = PresenceBatch::default();
        for n in ["a", "b", "c", "d"] {
            b.join(&name(n), Role::User, 2);
        }
        assert_eq!(b.joined.len(), 2);
        assert_eq!(b.unlisted, 2);
        for n in ["w", "x", "y"] {
            b.leave(&name(n), 2);
        }
        assert_eq!(b.left.len(), 2);
        assert_eq!(b.unlisted, 3);
        assert!(!b.is_empty());
    }

    #[test]
    fn a_rename_follows_a_join_still_in_the_batch() {
        let mut b = PresenceBatch::default();
        b.join(&name("ann"), Role::Admin, 10);
        b.renamed("ann", &name("anna"));
        assert_eq!(b.joined, [(name("anna"), Role::Admin)]);
        assert!(b.take_back("anna"));
        assert!(!b.take_back("anna"), "taken back once");
    }
}
