// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The incoming sessions of a kernel booted from a handover: in handover order, found by name
//! in O(1) (`RETRIEVE_SESSION`), removed in amortized O(1) when their last fd closes after
//! `FINISH`, and counted while they hold unfinished files, so every session path costs O(1)
//! whatever their number (upstream keeps them on a list under `luo_session_global`; the model
//! used to search and filter that list per call, quadratic in the number of sessions).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::session::Session;

#[derive(Default)]
pub(super) struct IncomingSessions {
    /// Handover order; removed sessions stay until the next compaction.
    order: Vec<Arc<Session>>,
    /// The first live session of each name (names are unique in a sound handover).
    by_name: HashMap<Vec<u8>, Arc<Session>>,
    /// Whether the handover had a name twice: a removal then looks for the next one.
    duplicate_names: bool,
    /// Removed sessions still in `order` (each marked `unlisted`).
    gone: usize,
    /// Sessions whose files are not finished yet.
    unfinished: usize,
}

fn gone(s: &Session) -> bool {
    // Only changed under the lists' lock, which every reader holds.
    s.unlisted.load(Ordering::Relaxed)
}

impl IncomingSessions {
    /// Appends the deserialized sessions; `has_files` says which hold files.
    pub(super) fn extend(&mut self, sessions: Vec<(Arc<Session>, bool)>) {
        self.by_name.reserve(sessions.len());
        self.order.reserve(sessions.len());
        for (s, has_files) in sessions {
            self.unfinished += usize::from(has_files);
            match self.by_name.entry(s.name.clone()) {
                std::collections::hash_map::Entry::Occupied(_) => self.duplicate_names = true,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Arc::clone(&s));
                }
            }
            self.order.push(s);
        }
    }

    /// The first live session named `name`.
    pub(super) fn find(&self, name: &[u8]) -> Option<Arc<Session>> {
        self.by_name.get(name).cloned()
    }

    /// The live sessions, in handover order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Arc<Session>> {
        let all = self.gone == 0;
        self.order.iter().filter(move |s| all || !gone(s))
    }

    /// A session finished its files.
    pub(super) fn finished_one(&mut self) {
        self.unfinished = self.unfinished.saturating_sub(1);
    }

    /// Whether no session holds unfinished files.
    pub(super) fn all_finished(&self) -> bool {
        self.unfinished == 0
    }

    /// Removes `s` (its last fd closed after `FINISH`).
    pub(super) fn remove(&mut self, s: &Arc<Session>) {
        if s.unlisted.swap(true, Ordering::Relaxed) {
            return;
        }
        self.gone += 1;
        if self.by_name.get(&s.name).is_some_and(|x| Arc::ptr_eq(x, s)) {
            self.by_name.remove(&s.name);
            if self.duplicate_names
                && let Some(next) = self.order.iter().find(|x| x.name == s.name && !gone(x))
            {
                self.by_name.insert(s.name.clone(), Arc::clone(next));
            }
        }
        // Compact once half the list is gone: amortized O(1) per removal.
        if 2 * self.gone > self.order.len() {
            self.order.retain(|x| !gone(x));
            self.gone = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(name: &str) -> Arc<Session> {
        Arc::new(Session::new(name.as_bytes().to_vec(), true))
    }

    #[test]
    fn found_by_name_removed_once_and_listed_in_order() {
        let mut inc = IncomingSessions::default();
        let s: Vec<_> = (0..10).map(|i| session(&format!("s{i}"))).collect();
        inc.extend(s.iter().map(|x| (Arc::clone(x), true)).collect());
        assert!(Arc::ptr_eq(&inc.find(b"s3").unwrap(), &s[3]));
        assert!(inc.find(b"nope").is_none());
        for x in &s[..9] {
            inc.finished_one();
            assert!(!inc.all_finished());
            inc.remove(x);
            inc.remove(x);
            assert!(inc.find(&x.name).is_none());
        }
        inc.finished_one();
        assert!(inc.all_finished());
        // Compacted along the way; what is left is listed.
        let left: Vec<_> = inc.iter().cloned().collect();
        assert_eq!(left.len(), 1);
        assert!(Arc::ptr_eq(&left[0], &s[9]));
        assert!(inc.order.len() < 10);
    }

    #[test]
    fn a_duplicate_name_is_found_after_the_first_goes() {
        let mut inc = IncomingSessions::default();
        let (a, b) = (session("x"), session("x"));
        inc.extend(vec![(Arc::clone(&a), false), (Arc::clone(&b), false)]);
        assert!(
            inc.all_finished(),
            "sessions without files count as finished"
        );
        assert!(Arc::ptr_eq(&inc.find(b"x").unwrap(), &a));
        inc.remove(&a);
        assert!(Arc::ptr_eq(&inc.find(b"x").unwrap(), &b));
        inc.remove(&b);
        assert!(inc.find(b"x").is_none());
        assert_eq!(inc.iter().count(), 0);
    }
}
