// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! LUO's handover formats (upstream `luo_session_serialize` / `luo_file_serialize` and the
//! boot-time readers): `luo-v5` block chains, the model's `next` format and the 6.19/7.0
//! FDT (`fdt_luo`), written at reboot and read at boot before anything is allocated.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use luo_abi::abi::AbiType;
use luo_abi::features::{FeatureDecl, FeatureError, FeatureHeader, negotiate};
use luo_abi::kho::KhoService;
use luo_abi::{Errno, PAGE_SIZE, PhysAddr};
use luo_generated::luo::luo_file_ser;
use luo_generated::luo::v5::{
    LUO_ABI_COMPAT_LEN, LUO_ABI_COMPATIBLE, LUO_FILES_PER_BLOCK, LUO_FLB_MAX, LUO_FLB_PGCNT,
    LUO_SESSIONS_PER_BLOCK, luo_file_set_ser, luo_flb_header_ser, luo_flb_ser, luo_ser,
    luo_session_ser,
};
use zerocopy::{FromZeros, IntoBytes};

use crate::blocks::{PhysRead, read_chain, read_obj};
use crate::error::ImageError;
use crate::lock_order::lock;
use crate::util::{cstr, lossy};
use crate::version::{KernelVersion, LuoFormat};
use luo_generated::luo::{next, v1};

use super::*;

/// A session as read at boot, before its files are bound to handlers.
#[derive(Clone, Debug)]
pub struct SessionImage {
    /// Name.
    pub name: Vec<u8>,
    /// Head of its file chain.
    pub files: u64,
    /// Its file count.
    pub count: u64,
    /// `files` is a contiguous `luo_file_ser[]` (6.19/7.0), not a block chain.
    pub flat: bool,
}

/// What the previous kernel handed over, as read at early boot.
#[derive(Clone, Debug, Default)]
pub struct Incoming {
    /// The previous `liveupdate_num`, if there was a live update.
    pub liveupdate_num: Option<u64>,
    /// Its sessions.
    pub sessions: Vec<SessionImage>,
    /// Its FLB entries (name → (data, count)); `None` without FLB data.
    pub flbs: Option<BTreeMap<String, (u64, u64)>>,
}

/// Reads the incoming LUO state (early boot), in any format the model knows. No `"LUO"`
/// subtree is a fresh start.
pub fn read_incoming<M: PhysRead + ?Sized>(
    mem: &M,
    subtree: Option<(u64, usize)>,
) -> Result<(Incoming, Vec<u64>), ImageError> {
    read_incoming_as(mem, subtree, KernelVersion::Next)
}

/// Which format a `"LUO"` subtree holds (FDT magic, `luo-v5` compatible, else a
/// feature-negotiated `luo_ser`).
pub fn detect_format<M: PhysRead + ?Sized>(
    mem: &M,
    root: u64,
    size: usize,
) -> Result<LuoFormat, ImageError> {
    if size < 8 {
        return Err(ImageError::LuoTooSmall {
            size,
            need: size_of::<luo_ser>(),
        });
    }
    let head: [u8; 8] = read_obj(mem, root, "LUO root")?;
    if head[..4] == crate::luo::fdt_luo::FDT_MAGIC.to_be_bytes() {
        return Ok(LuoFormat::V1);
    }
    let mut want = [0u8; LUO_ABI_COMPAT_LEN as usize];
    want[..LUO_ABI_COMPATIBLE.len()].copy_from_slice(LUO_ABI_COMPATIBLE.as_bytes());
    if head == want {
        return Ok(LuoFormat::V5);
    }
    if head.starts_with(b"luo-") {
        return Err(ImageError::Compatible {
            found: lossy(&head),
            expected: LUO_ABI_COMPATIBLE,
        });
    }
    if size >= size_of::<next::luo_ser>() {
        return Ok(LuoFormat::Next);
    }
    Err(ImageError::Compatible {
        found: lossy(&head),
        expected: LUO_ABI_COMPATIBLE,
    })
}

pub(super) fn format_name(f: LuoFormat) -> &'static str {
    match f {
        LuoFormat::V1 => "luo-v1 (FDT, luo-session-v2)",
        LuoFormat::V1Flb => "luo-v1 (FDT, luo-session-v2, luo-flb-v1)",
        LuoFormat::V5 => "luo-v5",
        LuoFormat::Next => "next (feature-negotiated luo_ser)",
    }
}

/// Reads the incoming LUO state as kernel `kernel` does: a format it does not read is an
/// [`ImageError::UnsupportedFormat`] (upstream: panic).
pub fn read_incoming_as<M: PhysRead + ?Sized>(
    mem: &M,
    subtree: Option<(u64, usize)>,
    kernel: KernelVersion,
) -> Result<(Incoming, Vec<u64>), ImageError> {
    let Some((root, size)) = subtree else {
        return Ok((Incoming::default(), Vec::new()));
    };
    let mut found = detect_format(mem, root, size)?;
    if found == LuoFormat::V1 {
        found = crate::luo::fdt_luo::flavour(mem, root, size)?;
    }
    let reads = kernel.luo_reads();
    if !reads.contains(&found) {
        return Err(ImageError::UnsupportedFormat {
            found: format_name(found).to_owned(),
            kernel: kernel.name(),
            reads: reads
                .iter()
                .map(|f| format_name(*f))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    match found {
        LuoFormat::V1 | LuoFormat::V1Flb => crate::luo::fdt_luo::read(mem, root, size),
        LuoFormat::V5 => {
            if size < size_of::<luo_ser>() {
                return Err(ImageError::LuoTooSmall {
                    size,
                    need: size_of::<luo_ser>(),
                });
            }
            let ser: luo_ser = read_obj(mem, root, "luo_ser")?;
            read_chains(
                mem,
                root,
                ser.liveupdate_num,
                ser.sessions_pa.addr().as_u64(),
                ser.flbs_pa.addr().as_u64(),
            )
        }
        LuoFormat::Next => {
            let ser: next::luo_ser = read_obj(mem, root, "luo_ser (next)")?;
            let known = next::LUO_CORE_FEATURES_SUPP;
            let h = ser.features;
            let decl = FeatureDecl {
                supported: known,
                required: 0,
                active: 0,
            };
            let hdr = FeatureHeader {
                supp: h.supp,
                req: h.req,
                active: h.active,
            };
            match negotiate(&decl, hdr, h.check_reserved().is_ok()) {
                Ok(_) => {}
                Err(FeatureError::UnknownRequired { bits }) => {
                    return Err(ImageError::UnknownFeature {
                        component: "luo",
                        bits,
                        known,
                    });
                }
                Err(e) => {
                    return Err(ImageError::BadFeatures {
                        component: "luo",
                        why: format!("{e:?}"),
                    });
                }
            }
            let active = h.active;
            let num = if active & next::LUO_FEATURE_NUMBER != 0 {
                ser.liveupdate_num
            } else {
                0
            };
            let sessions = if active & next::LUO_FEATURE_SESSIONS != 0 {
                ser.sessions_pa.addr().as_u64()
            } else {
                0
            };
            let flbs = if active & next::LUO_FEATURE_FLBS != 0 {
                ser.flbs_pa.addr().as_u64()
            } else {
                0
            };
            read_chains(mem, root, num, sessions, flbs)
        }
    }
}

/// Reads the session and FLB block chains of a `luo-v5` or `next` root.
pub(super) fn read_chains<M: PhysRead + ?Sized>(
    mem: &M,
    root: u64,
    liveupdate_num: u64,
    sessions_pa: u64,
    flbs_pa: u64,
) -> Result<(Incoming, Vec<u64>), ImageError> {
    // Pages the incoming metadata occupies (to restore and free once read).
    let mut pages = vec![root];
    let chain = read_chain(
        mem,
        sessions_pa,
        size_of::<luo_session_ser>(),
        LUO_SESSIONS_PER_BLOCK,
        "session",
    )?;
    pages.extend(&chain.blocks);
    let mut sessions = Vec::new();
    for (i, e) in chain
        .entries
        .chunks_exact(size_of::<luo_session_ser>())
        .enumerate()
    {
        let s: luo_session_ser =
            zerocopy::FromBytes::read_from_bytes(e).map_err(|_| ImageError::Truncated {
                what: "luo_session_ser",
                phys: root,
            })?;
        let end = s
            .name
            .iter()
            .position(|&b| b == 0)
            .ok_or(ImageError::SessionName { index: i })?;
        sessions.push(SessionImage {
            name: s.name[..end].to_vec(),
            files: s.file_set_ser.files.addr().as_u64(),
            count: s.file_set_ser.count,
            flat: false,
        });
    }
    let flbs = if flbs_pa == 0 {
        None
    } else {
        let h: luo_flb_header_ser = read_obj(mem, flbs_pa, "luo_flb_header_ser")?;
        if h.pgcnt != LUO_FLB_PGCNT || h.count > LUO_FLB_MAX {
            return Err(ImageError::FlbHeader {
                phys: flbs_pa,
                pgcnt: h.pgcnt,
                count: h.count,
            });
        }
        let mut map = BTreeMap::new();
        for i in 0..h.count {
            let at = (size_of::<luo_flb_header_ser>() as u64 + i * size_of::<luo_flb_ser>() as u64)
                .checked_add(flbs_pa)
                .ok_or(ImageError::Truncated {
                    what: "luo_flb_ser",
                    phys: flbs_pa,
                })?;
            let e: luo_flb_ser = read_obj(mem, at, "luo_flb_ser")?;
            let name = cstr(&e.name).ok_or(ImageError::FlbHeader {
                phys: flbs_pa,
                pgcnt: h.pgcnt,
                count: h.count,
            })?;
            map.insert(name.to_owned(), (e.data, e.count));
        }
        pages.push(flbs_pa);
        Some(map)
    };
    Ok((
        Incoming {
            liveupdate_num: Some(liveupdate_num),
            sessions,
            flbs,
        },
        pages,
    ))
}

impl Luo {
    pub(super) fn writes_fdt(&self) -> bool {
        matches!(self.version.luo_writes(), LuoFormat::V1 | LuoFormat::V1Flb)
    }

    /// 6.19/7.0: the session area (`luo_session_header_ser` + `luo_session_ser[]`,
    /// `LUO_SESSION_PGCNT` pages), allocated once.
    pub(super) fn write_session_area(&self, entries: &[luo_session_ser]) -> Result<u64, Errno> {
        if entries.len() as u64 > v1::LUO_SESSION_MAX {
            return Err(Errno::ENOSPC);
        }
        let mut a = lock(&self.v1_area);
        let area = match *a {
            Some(x) => x,
            None => {
                let x = self
                    .kho
                    .alloc_preserve(v1::LUO_SESSION_PGCNT as usize * PAGE_SIZE)?
                    .as_u64();
                *a = Some(x);
                x
            }
        };
        let h = v1::luo_session_header_ser {
            count: entries.len() as u64,
        };
        self.kho.write(PhysAddr::new(area), h.as_bytes())?;
        // `luo_session_ser` of luo-session-v2 and of luo-v5 have the same 80-byte layout.
        self.kho
            .write(PhysAddr::new(area + 8), entries.as_bytes())?;
        Ok(area)
    }

    pub(super) fn write_root(&self, sessions_pa: u64) -> Result<(), Errno> {
        match self.version.luo_writes() {
            LuoFormat::V5 => {}
            LuoFormat::Next => {
                let mut ser = next::luo_ser::new_zeroed();
                ser.features.supp = next::LUO_CORE_FEATURES_SUPP;
                ser.features.req = next::LUO_CORE_FEATURES_REQ;
                ser.features.active = next::LUO_CORE_FEATURES_ACTIVE;
                ser.liveupdate_num = self.liveupdate_num;
                ser.sessions_pa = luo_abi::Phys::new(PhysAddr::new(sessions_pa));
                ser.flbs_pa = luo_abi::Phys::new(PhysAddr::new(self.flb_area));
                return self.kho.write(PhysAddr::new(self.root), ser.as_bytes());
            }
            LuoFormat::V1 | LuoFormat::V1Flb => {
                let flbs = (self.version.luo_writes() == LuoFormat::V1Flb).then_some(self.flb_area);
                let fdt = crate::luo::fdt_luo::build(self.liveupdate_num, sessions_pa, flbs)
                    .map_err(|_| Errno::EINVAL)?;
                if fdt.len() > PAGE_SIZE {
                    return Err(Errno::ENOSPC);
                }
                return self.kho.write(PhysAddr::new(self.root), &fdt);
            }
        }
        let mut ser = luo_ser::new_zeroed();
        ser.compatible[..LUO_ABI_COMPATIBLE.len()].copy_from_slice(LUO_ABI_COMPATIBLE.as_bytes());
        ser.liveupdate_num = self.liveupdate_num;
        ser.sessions_pa = luo_abi::Phys::new(PhysAddr::new(sessions_pa));
        ser.flbs_pa = luo_abi::Phys::new(PhysAddr::new(self.flb_area));
        self.kho.write(PhysAddr::new(self.root), ser.as_bytes())
    }

    pub(super) fn write_flb_header(&self, count: u64) -> Result<(), Errno> {
        let h = luo_flb_header_ser {
            pgcnt: LUO_FLB_PGCNT,
            count,
        };
        self.kho.write(PhysAddr::new(self.flb_area), h.as_bytes())
    }

    pub(super) fn deserialize(&self) -> Result<(), Errno> {
        let mut d = lock(&self.deser);
        let pending = match &mut *d {
            Deser::Done(r) => return r.map_err(|_| Errno::EIO),
            Deser::Pending(p) => std::mem::take(p),
        };
        let r = self.deserialize_sessions(pending);
        *d = Deser::Done(r);
        drop(d);
        if r.is_ok() {
            // Bind the incoming files to handler global states registered before.
            for (compat, g) in self.handler_global_states() {
                g.add_files(self.incoming_files_of(&compat));
            }
            self.maybe_finish_subsystems();
        }
        r.map_err(|_| Errno::EIO)
    }

    pub(super) fn deserialize_sessions(&self, images: Vec<SessionImage>) -> Result<(), Errno> {
        let handlers = lock(&self.reg).handlers.clone();
        let mut sessions = Vec::new();
        for img in images {
            let chain = if img.flat {
                let mut entries = vec![0u8; img.count as usize * size_of::<luo_file_ser>()];
                let mut blocks = Vec::new();
                if img.files != 0 {
                    crate::blocks::read_preserved(&*self.kho, img.files, &mut entries, "file")?;
                    blocks.push(img.files);
                } else if img.count != 0 {
                    return Err(Errno::EINVAL);
                }
                crate::blocks::Chain { entries, blocks }
            } else {
                read_chain(
                    &*self.kho,
                    img.files,
                    size_of::<luo_file_ser>(),
                    LUO_FILES_PER_BLOCK,
                    "file",
                )?
            };
            let found = (chain.entries.len() / size_of::<luo_file_ser>()) as u64;
            if found != img.count {
                return Err(Errno::EINVAL);
            }
            let s = Session::new(img.name, true);
            {
                let mut st = lock(&s.st);
                for e in chain.entries.chunks_exact(size_of::<luo_file_ser>()) {
                    let fs: luo_file_ser =
                        zerocopy::FromBytes::read_from_bytes(e).map_err(|_| Errno::EINVAL)?;
                    let compat = cstr(&fs.compatible).ok_or(Errno::EINVAL)?;
                    let h = handlers
                        .iter()
                        .find(|h| h.compatible == compat)
                        .cloned()
                        .ok_or(Errno::ENOENT)?;
                    st.files.push(LuoFile {
                        token: fs.token,
                        handler: h,
                        file: None,
                        data: fs.data,
                        private: Ptr(std::ptr::null_mut()),
                        status: 0,
                        id: None,
                        deps: Vec::new(),
                        retrieving: false,
                    });
                }
                for &b in &chain.blocks {
                    let order = self.kho.restore_folio(PhysAddr::new(b))?;
                    st.in_blocks.push((b, order));
                }
            }
            let has_files = !lock(&s.st).files.is_empty();
            sessions.push((Arc::new(s), has_files));
        }
        lock(&self.lists).inc.extend(sessions);
        Ok(())
    }

    // ---- sessions -------------------------------------------------------------------------

    /// `liveupdate_reboot()`: freezes every file (sessions in order, files FIFO) and writes
    /// the `luo-v5` state. A failing freeze is rolled back in upstream order and returned;
    /// `log` records every freeze/unfreeze call.
    pub(crate) fn serialize(&self, log: &mut FreezeLog) -> Result<(), Errno> {
        self.check_live()?;
        self.release_idle_global_states();

        let l = lock(&self.lists);
        let mut entries: Vec<luo_session_ser> = Vec::with_capacity(l.out.len());
        for (si, s) in l.out.iter().enumerate() {
            let r = {
                let mut st = lock(&s.st);
                self.freeze_session(s, &mut st, log)
            };
            match r {
                Ok((files, count)) => {
                    let mut e = luo_session_ser::new_zeroed();
                    e.name[..s.name.len()].copy_from_slice(&s.name);
                    e.file_set_ser = luo_file_set_ser {
                        files: luo_abi::Phys::new(PhysAddr::new(files)),
                        count,
                    };
                    entries.push(e);
                }
                Err(err) => {
                    for prev in l.out[..si].iter().rev() {
                        let st = lock(&prev.st);
                        for f in st.files.iter() {
                            Self::unfreeze(prev, f, log);
                        }
                    }
                    l.blocks.clear(&*self.kho);
                    return Err(err);
                }
            }
        }
        if let Err(err) = self.freeze_subsystems() {
            for s in l.out.iter().rev() {
                let st = lock(&s.st);
                for f in st.files.iter() {
                    Self::unfreeze(s, f, log);
                }
            }
            l.blocks.clear(&*self.kho);
            return Err(err);
        }
        let written = (|| {
            let head = if self.writes_fdt() {
                self.write_session_area(&entries)?
            } else {
                l.blocks.write(&*self.kho, entries.as_bytes())?
            };
            self.flb_serialize()?;
            self.write_ext()?;
            self.write_root(head)
        })();
        if let Err(err) = written {
            // An allocation after the freeze failed (6.19/7.0's session area, the
            // global-state page): roll back as for a failed freeze, so this kernel carries on
            // (found by `fault_sweep::kho_allocation_failure_at_every_site`).
            self.cancel_frozen_subsystems();
            for s in l.out.iter().rev() {
                let st = lock(&s.st);
                for f in st.files.iter() {
                    Self::unfreeze(s, f, log);
                }
            }
            l.blocks.clear(&*self.kho);
            return Err(err);
        }
        self.frozen.store(true, Ordering::Release);
        Ok(())
    }
}
