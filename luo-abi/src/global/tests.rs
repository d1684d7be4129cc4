// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Unit tests of the global-state runtime.

use super::*;
use std::string::ToString;

#[test]
fn markers() {
    assert_eq!(Incoming::DIRECTION, Direction::Incoming);
    assert_eq!(Outgoing::DIRECTION, Direction::Outgoing);
    assert_eq!(Direction::Incoming.to_string(), "incoming");
}

use crate::lock::tests::StdBackend;
use std::sync::atomic::AtomicBool;
use std::vec::Vec;

/// An FLB object that records its drop: `dropped[id]` set once, `twice` counts repeats.
struct Obj {
    id: usize,
    dropped: Arc<Vec<AtomicBool>>,
    twice: Arc<AtomicUsize>,
}

impl Drop for Obj {
    fn drop(&mut self) {
        if self.dropped[self.id].swap(true, Ordering::SeqCst) {
            self.twice.fetch_add(1, Ordering::SeqCst);
        }
    }
}

struct Objs {
    dropped: Arc<Vec<AtomicBool>>,
    twice: Arc<AtomicUsize>,
}

impl Objs {
    fn new(n: usize) -> Objs {
        Objs {
            dropped: Arc::new((0..n).map(|_| AtomicBool::new(false)).collect()),
            twice: Arc::new(AtomicUsize::new(0)),
        }
    }
    fn make(&self, id: usize) -> Arc<Obj> {
        Arc::new(Obj {
            id,
            dropped: Arc::clone(&self.dropped),
            twice: Arc::clone(&self.twice),
        })
    }
    fn dropped(&self, id: usize) -> bool {
        self.dropped[id].load(Ordering::SeqCst)
    }
}

/// A withdrawn object outlives its lent guards, whatever the callback does with its `Arc`;
/// an object published meanwhile is lent only after the older one is released.
#[test]
fn lent_object_outlives_withdraw() {
    let objs = Objs::new(2);
    let lent: Lent<Obj, StdBackend> = Lent::new();
    assert!(lent.lend().is_none(), "nothing published");
    assert!(lent.lend_slow().is_none());
    assert!(lent.publish(objs.make(0)).is_none());
    let g = lent.lend().expect("live");
    assert!(g.owned.is_none(), "fast path: counted, no Arc");
    drop(lent.withdraw().expect("published"));
    assert!(!objs.dropped(0), "a guard still uses it");
    assert_eq!(g.id, 0);
    assert!(lent.lend().is_none(), "withdrawn");
    assert!(lent.publish(objs.make(1)).is_none());
    assert!(lent.lend().is_none(), "not lent while object 0 is retired");
    let slow = lent.lend_slow().expect("published");
    assert_eq!((slow.id, slow.owned.is_some()), (1, true));
    drop(g);
    assert!(objs.dropped(0), "released by its last guard");
    let g = lent.lend().expect("object 1 is lent now");
    assert_eq!(g.id, 1);
    drop((g, slow));
    drop(lent.withdraw());
    assert!(
        objs.dropped(1),
        "no guard left: dropped with the callback's Arc"
    );
    assert!(lent.withdraw().is_none());
    assert_eq!(objs.twice.load(Ordering::SeqCst), 0);
}

/// Guards in several threads while the object is published and withdrawn again and again
/// (preserve / unpreserve cycles): no guard sees a dropped object, and every object is
/// dropped exactly once.
#[test]
fn lent_objects_dropped_once_under_threads() {
    // Miri (`cargo +nightly miri test -p luo-abi`) checks the same for UB, more slowly.
    const GENERATIONS: usize = if cfg!(miri) { 30 } else { 400 };
    const THREADS: usize = 3;
    let objs = Objs::new(GENERATIONS);
    let lent: Lent<Obj, StdBackend> = Lent::new();
    let stop = AtomicBool::new(false);
    let seen = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let g = lent.lend().or_else(|| lent.lend_slow());
                    if let Some(g) = g {
                        let id = g.id;
                        std::thread::yield_now();
                        assert!(!objs.dropped(id), "object {id} dropped under a guard");
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        for id in 0..GENERATIONS {
            drop(lent.publish(objs.make(id)));
            std::thread::yield_now();
            drop(lent.withdraw());
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(seen.load(Ordering::Relaxed) > 0);
    assert_eq!(objs.twice.load(Ordering::SeqCst), 0, "dropped twice");
    for id in 0..GENERATIONS {
        assert!(objs.dropped(id), "object {id} never dropped");
    }
    assert_eq!(lent.state.load(Ordering::SeqCst), 0);
}
