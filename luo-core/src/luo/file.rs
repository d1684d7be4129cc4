// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Preserved files (upstream `kernel/liveupdate/luo_file.c`): PRESERVE_FD and RETRIEVE_FD
//! through the handler's ops, freeze at reboot and its rollback.

use std::ffi::c_void;
use std::sync::Arc;

use luo_abi::kho::KhoService;
use luo_abi::{Errno, PAGE_SIZE, PhysAddr};
use luo_generated::liveupdate::liveupdate_file_op_args;
use luo_generated::luo::luo_file_ser;
use zerocopy::IntoBytes;

use crate::file::CoreFile;
use crate::lock_order::lock;
use crate::util::lossy;
use luo_generated::luo::v1;

use super::*;

/// One preserved file of a session.
pub(crate) struct LuoFile {
    pub(crate) token: u64,
    pub(crate) handler: Arc<Handler>,
    pub(crate) file: Option<Arc<CoreFile>>,
    pub(crate) data: u64,
    pub(super) private: Ptr<c_void>,
    pub(crate) status: i32,
    pub(super) id: Option<u64>,
    /// Tokens of the files of the same session this one depends on, as recorded by
    /// `liveupdate_get_token_outgoing` / `liveupdate_get_file_incoming` ([`crate::luo::depend`]).
    pub(crate) deps: Vec<u64>,
    /// Its retrieve is running (on the thread owning the session's retrieval).
    pub(super) retrieving: bool,
}

impl LuoFile {
    pub(super) fn args(&self, s: &Session) -> liveupdate_file_op_args {
        let mut a = self.handler.args(s);
        a.retrieve_status = self.status;
        a.file = self
            .file
            .as_ref()
            .map_or(std::ptr::null_mut(), CoreFile::as_c);
        a.serialized_data = self.data;
        a.private_data = self.private.0;
        a
    }
}

impl Luo {
    /// Unfinished incoming files bound to the handler with `compat`.
    pub(crate) fn incoming_files_of(&self, compat: &str) -> u64 {
        let inc: Vec<_> = lock(&self.lists).inc.iter().cloned().collect();
        inc.iter()
            .map(|s| {
                lock(&s.st)
                    .files
                    .iter()
                    .filter(|f| f.handler.compatible == compat)
                    .count() as u64
            })
            .sum()
    }

    /// PRESERVE_FD, in the newest order of checks.
    pub(crate) fn preserve_fd(
        &self,
        s: &Arc<Session>,
        token: u64,
        file: Result<Arc<CoreFile>, Errno>,
    ) -> Result<(), Errno> {
        self.check_live()?;
        if s.incoming {
            return Err(Errno::EINVAL);
        }
        let mut st = lock(&s.st);
        if st.files.iter().any(|f| f.token == token) {
            return Err(Errno::EEXIST);
        }
        let n = st.files.len() as u64;
        if !self.writes_fdt() {
            st.blocks.ensure(&*self.kho, n + 1)?;
        }
        let r = self.preserve_file(s, &st.files, token, file);
        match r {
            Ok(f) => {
                st.files.push(f);
                Ok(())
            }
            Err(e) => {
                st.blocks.trim(&*self.kho, n);
                Err(e)
            }
        }
    }

    pub(super) fn preserve_file(
        &self,
        s: &Arc<Session>,
        preserved: &[LuoFile],
        token: u64,
        file: Result<Arc<CoreFile>, Errno>,
    ) -> Result<LuoFile, Errno> {
        let file = file?;
        let handlers = lock(&self.reg).handlers.clone();
        let h = handlers
            .into_iter()
            .find(|h| h.can_preserve(&file))
            .ok_or(Errno::ENOENT)?;
        let id = h.get_id(&file);
        if !lock(&self.ids).insert(id) {
            return Err(Errno::EBUSY);
        }
        if let Err(e) = self.flb_file_preserve(&h) {
            lock(&self.ids).remove(&id);
            return Err(e);
        }
        if let Err(e) = self.global_state_file_get(h.ptr.0) {
            self.flb_file_unpreserve(&h);
            lock(&self.ids).remove(&id);
            return Err(e);
        }
        let mut a = h.args(s);
        a.file = CoreFile::as_c(&file);
        let index = crate::luo::depend::outgoing_index(&h, preserved);
        let frame = crate::luo::depend::Frame::new(s, &h, index);
        let c = crate::luo::depend::in_frame(frame, || h.call(h.ops.0.preserve, &mut a));
        if c.overruled {
            h.call_void(h.ops.0.unpreserve, &mut a);
        }
        let deps = c.edges;
        if let Err(e) = c.r {
            self.global_state_file_put(h.ptr.0);
            self.flb_file_unpreserve(&h);
            lock(&self.ids).remove(&id);
            return Err(e);
        }
        Ok(LuoFile {
            token,
            handler: h,
            file: Some(file),
            data: a.serialized_data,
            private: Ptr(a.private_data),
            status: 0,
            id: Some(id),
            deps,
            retrieving: false,
        })
    }

    /// RETRIEVE_FD: returns the file to install (another reference on later calls).
    pub(crate) fn retrieve_fd(&self, s: &Arc<Session>, token: u64) -> Result<Arc<CoreFile>, Errno> {
        self.check_live()?;
        if !s.incoming {
            return Err(Errno::EINVAL);
        }
        if !lock(&s.st).retrieved {
            return Err(Errno::EINVAL);
        }
        let _own = s.own_retrieval();
        self.retrieve_file(s, token)
    }

    /// Retrieves the file under `token` once (later calls return it again), with the
    /// session's retrieval owned by this thread. The session lock is not held across the
    /// handler's retrieve, which may retrieve the file's dependencies
    /// (`liveupdate_get_file_incoming`); asking for a file whose retrieve is running is a
    /// cycle (`EDEADLK`).
    pub(crate) fn retrieve_file(
        &self,
        s: &Arc<Session>,
        token: u64,
    ) -> Result<Arc<CoreFile>, Errno> {
        let (mut a, h) = {
            let mut st = lock(&s.st);
            let f = st
                .files
                .iter_mut()
                .find(|f| f.token == token)
                .ok_or(Errno::ENOENT)?;
            if f.status < 0 {
                return Err(Errno::from_neg(f.status).unwrap_or(Errno::EIO));
            }
            if let Some(file) = &f.file {
                return Ok(Arc::clone(file));
            }
            if f.retrieving {
                return Err(Errno::EDEADLK);
            }
            f.retrieving = true;
            (f.args(s), Arc::clone(&f.handler))
        };
        let frame = crate::luo::depend::Frame::new(s, &h, Arc::from([]));
        let c = crate::luo::depend::in_frame(frame, || h.call(h.ops.0.retrieve, &mut a));
        if c.overruled {
            // SAFETY: the retrieve succeeded, so it handed over one reference to its file,
            // which is dropped here.
            drop(unsafe { CoreFile::from_c_owned(a.file.cast_const()) });
        }
        let (r, deps) = (c.r, c.edges);
        let mut st = lock(&s.st);
        // Still there: finishing the session needs its retrieval, which this thread owns.
        let f = st
            .files
            .iter_mut()
            .find(|f| f.token == token)
            .ok_or(Errno::EINVAL)?;
        f.retrieving = false;
        crate::luo::depend::merge(&mut f.deps, deps);
        if let Err(e) = r {
            f.status = e.to_neg();
            return Err(e);
        }
        // SAFETY: a handler's retrieve hands over one reference to the file it returns.
        let Some(file) = (unsafe { CoreFile::from_c_owned(a.file.cast_const()) }) else {
            f.status = Errno::EINVAL.to_neg();
            return Err(Errno::EINVAL);
        };
        if let Some(m) = file.memfd() {
            m.settle()?;
        }
        f.status = 1;
        let id = f.handler.get_id(&file);
        if lock(&self.ids).insert(id) {
            f.id = Some(id);
        }
        f.file = Some(Arc::clone(&file));
        Ok(file)
    }

    pub(super) fn unfreeze(s: &Session, f: &LuoFile, log: &mut FreezeLog) {
        let mut a = f.args(s);
        log.push((lossy(&s.name), f.token, "unfreeze"));
        f.handler.call_void(f.handler.ops.0.unfreeze, &mut a);
    }

    pub(super) fn freeze_session(
        &self,
        s: &Arc<Session>,
        st: &mut SessionSt,
        log: &mut FreezeLog,
    ) -> Result<(u64, u64), Errno> {
        // Built once, for the first file whose handler declares dependencies.
        let mut index = None;
        for i in 0..st.files.len() {
            let h = Arc::clone(&st.files[i].handler);
            let idx = if h.depends_on.is_empty() {
                Arc::from([])
            } else {
                Arc::clone(
                    index.get_or_insert_with(|| crate::luo::depend::outgoing_index(&h, &st.files)),
                )
            };
            let f = &mut st.files[i];
            let mut a = f.args(s);
            log.push((lossy(&s.name), f.token, "freeze"));
            let frame = crate::luo::depend::Frame::new(s, &h, idx);
            let c = crate::luo::depend::in_frame(frame, || h.call(h.ops.0.freeze, &mut a));
            crate::luo::depend::merge(&mut f.deps, c.edges);
            if c.overruled {
                Self::unfreeze(s, f, log);
            }
            match c.r {
                Ok(()) => f.data = a.serialized_data,
                Err(e) => {
                    for g in &st.files[..i] {
                        Self::unfreeze(s, g, log);
                    }
                    st.blocks.clear(&*self.kho);
                    return Err(e);
                }
            }
        }
        let entries: Vec<luo_file_ser> = st
            .files
            .iter()
            .map(|f| luo_file_ser {
                compatible: f.handler.compat_buf,
                data: f.data,
                token: f.token,
            })
            .collect();
        if self.writes_fdt() {
            // 6.19/7.0: one contiguous area of LUO_FILE_PGCNT pages per session.
            if entries.len() as u64 > v1::LUO_FILE_MAX {
                for g in st.files.iter() {
                    Self::unfreeze(s, g, log);
                }
                return Err(Errno::ENOSPC);
            }
            let area = match st.flat {
                Some(a) => Ok(a),
                None => self
                    .kho
                    .alloc_preserve(v1::LUO_FILE_PGCNT as usize * PAGE_SIZE)
                    .map(|p| p.as_u64()),
            };
            let written = area.and_then(|a| {
                st.flat = Some(a);
                self.kho
                    .write(PhysAddr::new(a), entries.as_bytes())
                    .map(|()| a)
            });
            return match written {
                Ok(a) => Ok((a, entries.len() as u64)),
                Err(e) => {
                    // This session's files are frozen already: unfreeze them, as for a failed
                    // freeze (found by `fault_sweep::kho_allocation_failure_at_every_site`).
                    for g in st.files.iter() {
                        Self::unfreeze(s, g, log);
                    }
                    Err(e)
                }
            };
        }
        let head = st.blocks.write(&*self.kho, entries.as_bytes())?;
        Ok((head, entries.len() as u64))
    }

    /// The file preserved (or retrieved) under `token` in `s`, if any.
    pub fn file_of(&self, s: &Session, token: u64) -> Option<Arc<CoreFile>> {
        lock(&s.st)
            .files
            .iter()
            .find(|f| f.token == token)
            .and_then(|f| f.file.clone())
    }
}
