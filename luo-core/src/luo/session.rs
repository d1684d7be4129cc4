// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Sessions (upstream `kernel/liveupdate/luo_session.c`): outgoing sessions created through
//! `/dev/liveupdate`, incoming ones retrieved by name, FINISH and release.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use std::thread::ThreadId;

use luo_abi::kho::KhoService;
use luo_abi::{Errno, PhysAddr};
use luo_generated::liveupdate::liveupdate_session;
use luo_generated::luo::luo_file_ser;
use luo_generated::luo::v5::LUO_FILES_PER_BLOCK;

use crate::blocks::BlockSet;
use crate::lock_order::{Level, Ordered, lock};

use super::*;

pub(crate) struct SessionSt {
    pub(crate) files: Vec<LuoFile>,
    pub(crate) retrieved: bool,
    pub(super) blocks: BlockSet,
    /// Incoming metadata pages of the session's files (phys, order), freed at finish.
    pub(super) in_blocks: Vec<(u64, u32)>,
    /// The outgoing `luo-v1` file area (6.19/7.0: one contiguous 2-page array).
    pub(super) flat: Option<u64>,
}

/// A session (outgoing, or incoming from the previous kernel).
pub struct Session {
    pub(super) name: Vec<u8>,
    pub(super) incoming: bool,
    pub(crate) st: Ordered<SessionSt>,
    /// The thread retrieving files of the session and its nesting depth: a retrieve may
    /// retrieve its dependencies ([`crate::luo::depend`]), so retrieval is owned by one thread at a
    /// time (upstream holds the session mutex across it) and re-entrant on that thread.
    pub(super) owner: Mutex<Owner>,
    /// An incoming session removed from the incoming list (its last fd closed after
    /// `FINISH`), until the list is compacted ([`super::incoming::IncomingSessions`]).
    pub(super) unlisted: std::sync::atomic::AtomicBool,
    pub(super) owner_cv: Condvar,
}

/// Who owns a session's retrieval (thread and nesting depth), and how many threads wait for
/// it: the last release wakes them only if there are any (a condvar notify is a futex call
/// per release otherwise, once per `FINISH` of every session).
#[derive(Default)]
pub(super) struct Owner {
    holder: Option<(ThreadId, u32)>,
    waiters: u32,
}

/// Ownership of a session's retrieval, released on drop.
pub(crate) struct RetrieveOwner<'a>(&'a Session);

impl Drop for RetrieveOwner<'_> {
    fn drop(&mut self) {
        let mut o = lock(&self.0.owner);
        if let Some((t, n)) = o.holder {
            o.holder = (n > 1).then_some((t, n - 1));
        }
        if o.holder.is_none() && o.waiters > 0 {
            self.0.owner_cv.notify_all();
        }
    }
}

impl Session {
    /// The session behind a session fd (its `FileObj::Session` private data).
    pub(crate) fn of_private(
        private: &Arc<dyn std::any::Any + Send + Sync>,
    ) -> Option<Arc<Session>> {
        Arc::clone(private).downcast::<Session>().ok()
    }

    pub(super) fn new(name: Vec<u8>, incoming: bool) -> Session {
        Session {
            owner: Mutex::new(Owner::default()),
            unlisted: std::sync::atomic::AtomicBool::new(false),
            owner_cv: Condvar::new(),
            name,
            incoming,
            st: Ordered::new(
                Level::Session,
                SessionSt {
                    files: Vec::new(),
                    retrieved: false,
                    blocks: BlockSet::new(size_of::<luo_file_ser>(), LUO_FILES_PER_BLOCK),
                    in_blocks: Vec::new(),
                    flat: None,
                },
            ),
        }
    }

    /// The `struct liveupdate_session *` handlers see (`liveupdate_file_op_args.session`).
    pub(crate) fn as_c(&self) -> *mut liveupdate_session {
        (self as *const Session).cast_mut().cast()
    }

    /// Takes ownership of the session's retrieval: waits while another thread has it,
    /// nests on this one.
    pub(crate) fn own_retrieval(&self) -> RetrieveOwner<'_> {
        let me = std::thread::current().id();
        let mut o = lock(&self.owner);
        loop {
            match o.holder {
                None => {
                    o.holder = Some((me, 1));
                    break;
                }
                Some((t, n)) if t == me => {
                    o.holder = Some((t, n + 1));
                    break;
                }
                Some(_) => {
                    // Counted under the mutex the wait releases, so a release sees it.
                    o.waiters += 1;
                    o = self
                        .owner_cv
                        .wait(o)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    o.waiters -= 1;
                }
            }
        }
        RetrieveOwner(self)
    }

    /// The session name (without NUL).
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// Whether it came from the previous kernel.
    pub fn is_incoming(&self) -> bool {
        self.incoming
    }

    /// Tokens of its files, in preservation order.
    pub fn tokens(&self) -> Vec<u64> {
        lock(&self.st).files.iter().map(|f| f.token).collect()
    }

    /// Tokens of the files the file under `token` depends on, as recorded by LUO.
    pub fn file_deps(&self, token: u64) -> Option<Vec<u64>> {
        lock(&self.st)
            .files
            .iter()
            .find(|f| f.token == token)
            .map(|f| f.deps.clone())
    }

    /// The handler's serialized-data handle of the file under `token` (its `luo_file_ser.data`).
    pub fn file_data(&self, token: u64) -> Option<u64> {
        lock(&self.st)
            .files
            .iter()
            .find(|f| f.token == token)
            .map(|f| f.data)
    }
}

impl Luo {
    /// Whether the incoming sessions were deserialized and none has unfinished files.
    pub(crate) fn incoming_all_finished(&self) -> bool {
        if !matches!(*lock(&self.deser), Deser::Done(Ok(()))) {
            return false;
        }
        lock(&self.lists).inc.all_finished()
    }

    /// CREATE_SESSION.
    pub(crate) fn create_session(&self, name: &[u8]) -> Result<Arc<Session>, Errno> {
        self.check_live()?;
        let mut l = lock(&self.lists);
        if l.names.contains(name) {
            return Err(Errno::EEXIST);
        }
        let n = l.out.len() as u64 + 1;
        if !self.writes_fdt() {
            l.blocks.ensure(&*self.kho, n)?;
        }
        let s = Arc::new(Session::new(name.to_vec(), false));
        l.out.push(Arc::clone(&s));
        l.names.insert(name.to_vec());
        Ok(s)
    }

    /// RETRIEVE_SESSION.
    pub(crate) fn retrieve_session(&self, name: &[u8]) -> Result<Arc<Session>, Errno> {
        self.check_live()?;
        let l = lock(&self.lists);
        let s = l.inc.find(name).ok_or(Errno::ENOENT)?;
        let mut st = lock(&s.st);
        if st.retrieved {
            return Err(Errno::EINVAL);
        }
        st.retrieved = true;
        drop(st);
        Ok(s)
    }

    /// FINISH: `can_finish` for every file, then `finish` from the last file to the first.
    pub(crate) fn finish(&self, s: &Session) -> Result<(), Errno> {
        self.check_live()?;
        if !s.incoming {
            return Err(Errno::EINVAL);
        }
        let _own = s.own_retrieval();
        let mut st = lock(&s.st);
        if !st.retrieved {
            return Err(Errno::EINVAL);
        }
        if st.files.is_empty() {
            return Ok(());
        }
        for f in &st.files {
            if let Some(cb) = f.handler.ops.0.can_finish {
                let mut a = f.args(s);
                // SAFETY: `a` is a valid, exclusive argument block for the call.
                if !unsafe { cb(&mut a) } {
                    return Err(Errno::EBUSY);
                }
            }
        }
        for f in crate::luo::depend::take_in_release_order(&mut st.files, true) {
            let mut a = f.args(s);
            f.handler.call_void(f.handler.ops.0.finish, &mut a);
            self.flb_file_finish(&f.handler);
            self.global_state_file_put(f.handler.ptr.0);
            if let Some(id) = f.id {
                lock(&self.ids).remove(&id);
            }
        }
        for (b, order) in std::mem::take(&mut st.in_blocks) {
            let _ = self.kho.free_folio(PhysAddr::new(b), order);
        }
        drop(st);
        lock(&self.lists).inc.finished_one();
        self.kho.release_idle_regions();
        self.maybe_finish_subsystems();
        Ok(())
    }

    /// Last close of a session fd: an outgoing session unpreserves its files (last to
    /// first) and goes away; a retrieved one is finished, and stays if that fails.
    pub(crate) fn release_session(&self, s: &Arc<Session>) {
        if self.frozen.load(Ordering::Acquire) {
            return;
        }
        if s.incoming {
            if self.finish(s).is_ok() {
                lock(&self.lists).inc.remove(s);
            }
            return;
        }
        {
            let mut st = lock(&s.st);
            for f in crate::luo::depend::take_in_release_order(&mut st.files, false) {
                let mut a = f.args(s);
                f.handler.call_void(f.handler.ops.0.unpreserve, &mut a);
                self.flb_file_unpreserve(&f.handler);
                self.global_state_file_put(f.handler.ptr.0);
                if let Some(id) = f.id {
                    lock(&self.ids).remove(&id);
                }
            }
            st.blocks.free_all(&*self.kho);
            if let Some(a) = st.flat.take() {
                let _ = self.kho.unpreserve_free(PhysAddr::new(a));
            }
        }
        let mut l = lock(&self.lists);
        l.out.retain(|x| !Arc::ptr_eq(x, s));
        l.names.remove(&s.name);
        let n = l.out.len() as u64;
        l.blocks.trim(&*self.kho, n);
    }

    /// Outgoing sessions, in creation order.
    pub fn outgoing(&self) -> Vec<Arc<Session>> {
        lock(&self.lists).out.clone()
    }

    /// Incoming sessions (after deserialization), in handover order.
    pub fn incoming(&self) -> Vec<Arc<Session>> {
        lock(&self.lists).inc.iter().cloned().collect()
    }

    // ---- reboot ---------------------------------------------------------------------------
}
