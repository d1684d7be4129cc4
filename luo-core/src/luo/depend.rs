// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! File-to-file dependencies: a preserved file that needs another file of the same session
//! (upstream's guest_memfd names its KVM VM by the VM file's token).
//!
//! The relation is a framework feature, not handler code:
//! * **declared** — a handler lists the compatibles its files may depend on
//!   (`liveupdate_file_handler.depends_on`, read once at registration);
//! * **checked** — `liveupdate_get_token_outgoing` (from preserve or freeze) and
//!   `liveupdate_get_file_incoming` (from retrieve) only work from a callback of a file of the
//!   session they name, refuse a file whose handler is not declared (`EINVAL`) and a file not
//!   in the session (`ENOENT`); every successful call records an edge on the calling file, and
//!   a failed one fails the callback even if the handler goes on and returns success (the core
//!   then undoes the callback: unpreserve, unfreeze, or dropping the retrieved file);
//! * **resolved** — `liveupdate_get_file_incoming` retrieves the dependency first (a retrieve
//!   that needs itself, directly or through others, is a cycle: `EDEADLK`), and dependents are
//!   released before their dependencies: unpreserve when an outgoing session is closed and
//!   finish of an incoming one (`take_in_release_order`).
//!
//! Which callback is running is a per-thread stack of `Frame`s (callbacks nest: a retrieve
//! retrieves its dependencies). An outgoing frame carries an index of the session's preserved
//! files taken before the callback, because the core holds the session lock across preserve
//! and freeze.

use std::cell::RefCell;
use std::sync::Arc;

use luo_abi::Errno;
use luo_generated::liveupdate::{LIVEUPDATE_DEPENDS_MAX, file as CFile, liveupdate_session};
use luo_generated::luo::LIVEUPDATE_HNDL_COMPAT_LENGTH;

use crate::file::CoreFile;
use crate::luo::{Handler, Luo, LuoFile, Session};
use crate::mem::lock;

/// One preserved file of an outgoing session, as a lookup sees it: token, file address,
/// handler compatible.
#[derive(Clone)]
pub(crate) struct Indexed {
    token: u64,
    file: usize,
    compatible: String,
}

/// The index of an outgoing session's files for the lookups of a callback of `handler`, made
/// while the session's lock is held. Only a handler that declares dependencies can name one,
/// so the others get an empty index and no per-callback copy of the session's files.
pub(crate) fn outgoing_index(handler: &Handler, files: &[LuoFile]) -> Arc<[Indexed]> {
    if handler.depends_on.is_empty() {
        return Arc::from([]);
    }
    files
        .iter()
        .filter_map(|f| {
            Some(Indexed {
                token: f.token,
                file: Arc::as_ptr(f.file.as_ref()?) as usize,
                compatible: f.handler.compatible.clone(),
            })
        })
        .collect()
}

/// A running file callback: its session, its handler, the session's index (outgoing), the
/// dependencies it named so far and the first lookup of its that failed.
pub(crate) struct Frame {
    session: Arc<Session>,
    handler: Arc<Handler>,
    index: Arc<[Indexed]>,
    edges: Vec<u64>,
    failed: Option<Errno>,
}

impl Frame {
    pub(crate) fn new(
        session: &Arc<Session>,
        handler: &Arc<Handler>,
        index: Arc<[Indexed]>,
    ) -> Self {
        Frame {
            session: Arc::clone(session),
            handler: Arc::clone(handler),
            index,
            edges: Vec::new(),
            failed: None,
        }
    }
}

thread_local! {
    static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

/// What a callback run in a [`Frame`] came to.
pub(crate) struct Called {
    /// Its result, or the error of a dependency lookup of its that failed.
    pub(crate) r: Result<(), Errno>,
    /// The tokens it depended on.
    pub(crate) edges: Vec<u64>,
    /// It succeeded although one of its lookups failed: `r` is the lookup's error, and the
    /// core undoes what the callback did.
    pub(crate) overruled: bool,
}

/// Runs a callback inside `frame`. A dependency lookup that failed fails the callback
/// whatever the handler returned: a file does not cross the live update with a dependency
/// that is missing, undeclared or unretrievable.
pub(crate) fn in_frame(frame: Frame, f: impl FnOnce() -> Result<(), Errno>) -> Called {
    FRAMES.with(|s| s.borrow_mut().push(frame));
    let r = f();
    let (edges, failed) = FRAMES
        .with(|s| s.borrow_mut().pop())
        .map(|f| (f.edges, f.failed))
        .unwrap_or_default();
    match (r, failed) {
        (Ok(()), Some(e)) => Called {
            r: Err(e),
            edges,
            overruled: true,
        },
        (r, _) => Called {
            r,
            edges,
            overruled: false,
        },
    }
}

/// Notes a failed lookup on the innermost frame (the first one counts).
fn failed<T>(r: Result<T, Errno>) -> Result<T, Errno> {
    if let Err(e) = &r {
        FRAMES.with(|f| {
            if let Some(top) = f.borrow_mut().last_mut() {
                top.failed.get_or_insert(*e);
            }
        });
    }
    r
}

/// Adds the newly recorded `edges` to `deps` (once each).
pub(crate) fn merge(deps: &mut Vec<u64>, edges: Vec<u64>) {
    for e in edges {
        if !deps.contains(&e) {
            deps.push(e);
        }
    }
}

/// The innermost frame if it is a callback of `s`: its session and handler.
fn caller(s: *const liveupdate_session) -> Result<(Arc<Session>, Arc<Handler>), Errno> {
    FRAMES.with(|f| {
        let f = f.borrow();
        let top = f.last().ok_or(Errno::EINVAL)?;
        if !std::ptr::eq(top.session.as_c().cast_const(), s) {
            return Err(Errno::EINVAL);
        }
        Ok((Arc::clone(&top.session), Arc::clone(&top.handler)))
    })
}

fn record(token: u64) {
    FRAMES.with(|f| {
        if let Some(top) = f.borrow_mut().last_mut() {
            merge(&mut top.edges, vec![token]);
        }
    });
}

/// Reads a handler's `depends_on` array at registration.
///
/// # Safety
///
/// `p` is NULL or points to a NULL-terminated array of NUL-terminated strings (at most
/// `LIVEUPDATE_DEPENDS_MAX` of them), valid for the call.
pub(crate) unsafe fn read_depends_on(p: *const *const u8) -> Result<Vec<String>, Errno> {
    let mut out = Vec::new();
    if p.is_null() {
        return Ok(out);
    }
    for i in 0..=LIVEUPDATE_DEPENDS_MAX as usize {
        // SAFETY: the array is NULL-terminated (caller contract) and we stop at the NULL or
        // after LIVEUPDATE_DEPENDS_MAX + 1 entries, refusing a longer array.
        let e = unsafe { p.add(i).read() };
        if e.is_null() {
            return Ok(out);
        }
        if i == LIVEUPDATE_DEPENDS_MAX as usize {
            break;
        }
        let mut name = Vec::new();
        loop {
            // SAFETY: a NUL-terminated string (caller contract), read up to its NUL or the
            // compatible length, whichever comes first.
            let b = unsafe { e.add(name.len()).read() };
            if b == 0 {
                break;
            }
            name.push(b);
            if name.len() >= LIVEUPDATE_HNDL_COMPAT_LENGTH as usize {
                return Err(Errno::EINVAL);
            }
        }
        let name = String::from_utf8(name).map_err(|_| Errno::EINVAL)?;
        if name.is_empty() {
            return Err(Errno::EINVAL);
        }
        out.push(name);
    }
    Err(Errno::EINVAL)
}

/// Takes the files out of a session in release order: a file goes after every file that
/// depends on it; otherwise last preserved first, as upstream. Files on a dependency cycle
/// (which only a retrieve can refuse) go last to first.
///
/// The edges are those recorded in this kernel. An incoming file never retrieved recorded
/// none, so it is taken to depend on every file of the session whose handler it declares.
pub(crate) fn take_in_release_order(files: &mut Vec<LuoFile>, incoming: bool) -> Vec<LuoFile> {
    if incoming {
        let declared: Vec<(u64, String)> = files
            .iter()
            .map(|f| (f.token, f.handler.compatible.clone()))
            .collect();
        for f in files.iter_mut().filter(|f| f.status == 0) {
            let own = f.token;
            let deps = declared
                .iter()
                .filter(|(t, c)| *t != own && f.handler.depends_on.contains(c))
                .map(|(t, _)| *t)
                .collect();
            merge(&mut f.deps, deps);
        }
    }
    let mut left: Vec<Option<LuoFile>> = std::mem::take(files).into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(left.len());
    loop {
        let pick = {
            let needed = |t: u64| {
                left.iter()
                    .flatten()
                    .any(|g| g.token != t && g.deps.contains(&t))
            };
            let mut live = (0..left.len())
                .rev()
                .filter_map(|i| Some((i, left[i].as_ref()?.token)));
            let last = live.clone().next();
            live.find(|&(_, t)| !needed(t)).or(last)
        };
        match pick.and_then(|(i, _)| left[i].take()) {
            Some(f) => out.push(f),
            None => break,
        }
    }
    out
}

impl Luo {
    /// `liveupdate_get_token_outgoing`: the token of `file` in the outgoing session `s`, from
    /// a preserve or freeze callback of a file of `s` (recorded as its dependency).
    pub fn get_token_outgoing(
        &self,
        s: *const liveupdate_session,
        file: *const CFile,
    ) -> Result<u64, Errno> {
        if !self.enabled() {
            return Err(Errno::EOPNOTSUPP);
        }
        let token = failed(FRAMES.with(|f| {
            let f = f.borrow();
            let top = f.last().ok_or(Errno::EINVAL)?;
            if !std::ptr::eq(top.session.as_c().cast_const(), s)
                || top.session.is_incoming()
                || top.handler.depends_on.is_empty()
            {
                return Err(Errno::EINVAL);
            }
            let e = top
                .index
                .iter()
                .find(|e| e.file == file as usize)
                .ok_or(Errno::ENOENT)?;
            if !top.handler.depends_on.contains(&e.compatible) {
                return Err(Errno::EINVAL);
            }
            Ok(e.token)
        }))?;
        record(token);
        Ok(token)
    }

    /// `liveupdate_get_file_incoming`: the file under `token` in the incoming session `s`,
    /// retrieved first if needed, from a retrieve callback of a file of `s` (recorded as its
    /// dependency).
    pub fn get_file_incoming(
        &self,
        s: *const liveupdate_session,
        token: u64,
    ) -> Result<Arc<CoreFile>, Errno> {
        if !self.enabled() {
            return Err(Errno::EOPNOTSUPP);
        }
        failed(self.file_incoming(s, token))
    }

    fn file_incoming(
        &self,
        s: *const liveupdate_session,
        token: u64,
    ) -> Result<Arc<CoreFile>, Errno> {
        let (session, handler) = caller(s)?;
        if !session.is_incoming() {
            return Err(Errno::EINVAL);
        }
        let compatible = lock(&session.st)
            .files
            .iter()
            .find(|f| f.token == token)
            .map(|f| f.handler.compatible.clone())
            .ok_or(Errno::ENOENT)?;
        if !handler.depends_on.contains(&compatible) {
            return Err(Errno::EINVAL);
        }
        // This thread runs a retrieve of the session, so it owns the session's retrieval.
        let _own = session.own_retrieval();
        let f = self.retrieve_file(&session, token)?;
        record(token);
        Ok(f)
    }
}
