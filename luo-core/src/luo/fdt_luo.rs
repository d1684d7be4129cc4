// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The 6.19/7.0 handover format: a `luo-v1` FDT (one page) in the `"LUO"` subtree with a
//! `luo-session` node (`luo-session-v2`, property `luo-session-header`: the physical address of
//! `luo_session_header_ser` followed by `luo_session_ser[]`, a 16-page area), each session's
//! files one contiguous 2-page `luo_file_ser[]` area (at most 128), and in 7.0 a `luo-flb`
//! node (`luo-flb-v1`, property `luo-flb-header`). Properties are native-endian u64.

use std::collections::BTreeMap;

use luo_generated::luo::v1::{
    LUO_FDT_COMPATIBLE, LUO_FDT_LIVEUPDATE_NUM, LUO_FDT_SESSION_COMPATIBLE, LUO_FDT_SESSION_HEADER,
    LUO_FDT_SESSION_NODE_NAME, LUO_FILE_MAX, LUO_SESSION_MAX, luo_session_header_ser,
    luo_session_ser,
};
use luo_generated::luo::v1_flb::{
    LUO_FDT_FLB_COMPATIBLE, LUO_FDT_FLB_HEADER, LUO_FDT_FLB_NODE_NAME, LUO_FLB_MAX, LUO_FLB_PGCNT,
    luo_flb_header_ser, luo_flb_ser,
};

use crate::blocks::{PhysRead, read_claimed, read_obj};
use crate::error::ImageError;
use crate::fdt::{self, Node};
use crate::luo::{Incoming, SessionImage};
use crate::util::cstr;
use crate::version::LuoFormat;

/// The FDT header magic (big-endian in the blob).
pub const FDT_MAGIC: u32 = 0xd00d_feed;

fn bad(why: impl Into<String>) -> ImageError {
    ImageError::Fdt { why: why.into() }
}

/// Builds the `luo-v1` FDT: `sessions` is the session area, `flbs` the FLB area (7.0 only).
pub fn build(
    liveupdate_num: u64,
    sessions: u64,
    flbs: Option<u64>,
) -> Result<Vec<u8>, fdt::FdtError> {
    let mut root = Node::new("")
        .prop_str("compatible", LUO_FDT_COMPATIBLE)
        .prop_u64(LUO_FDT_LIVEUPDATE_NUM, liveupdate_num)
        .child(
            Node::new(LUO_FDT_SESSION_NODE_NAME)
                .prop_str("compatible", LUO_FDT_SESSION_COMPATIBLE)
                .prop_u64(LUO_FDT_SESSION_HEADER, sessions),
        );
    if let Some(f) = flbs {
        root = root.child(
            Node::new(LUO_FDT_FLB_NODE_NAME)
                .prop_str("compatible", LUO_FDT_FLB_COMPATIBLE)
                .prop_u64(LUO_FDT_FLB_HEADER, f),
        );
    }
    fdt::write(&root)
}

/// The FDT the `"LUO"` subtree entry points at. Its size comes from the handover (the KHO
/// subtree entry), so it is bounded by the memory preserved there before it is allocated.
fn load<M: PhysRead + ?Sized>(mem: &M, root: u64, size: usize) -> Result<Node, ImageError> {
    let b = read_claimed(mem, root, size, "luo-v1 FDT")?;
    let t = fdt::parse(&b).map_err(|e| bad(e.to_string()))?;
    match t.prop_as_str("compatible") {
        Some(c) if c == LUO_FDT_COMPATIBLE => Ok(t),
        other => Err(ImageError::Compatible {
            found: other.unwrap_or("<none>").to_owned(),
            expected: LUO_FDT_COMPATIBLE,
        }),
    }
}

/// Which flavour of `luo-v1` the FDT is: with a `luo-flb` node (7.0) or without (6.19).
pub fn flavour<M: PhysRead + ?Sized>(
    mem: &M,
    root: u64,
    size: usize,
) -> Result<LuoFormat, ImageError> {
    let t = load(mem, root, size)?;
    Ok(if t.find(LUO_FDT_FLB_NODE_NAME).is_some() {
        LuoFormat::V1Flb
    } else {
        LuoFormat::V1
    })
}

/// Reads a `luo-v1` FDT image: sessions (each with a flat file array) and FLBs.
pub fn read<M: PhysRead + ?Sized>(
    mem: &M,
    root: u64,
    size: usize,
) -> Result<(Incoming, Vec<u64>), ImageError> {
    let t = load(mem, root, size)?;
    let num = t
        .prop_as_u64(LUO_FDT_LIVEUPDATE_NUM)
        .ok_or_else(|| bad(format!("missing or short {LUO_FDT_LIVEUPDATE_NUM}")))?;
    let sn = t
        .find(LUO_FDT_SESSION_NODE_NAME)
        .ok_or_else(|| bad("no luo-session node"))?;
    match sn.prop_as_str("compatible") {
        Some(c) if c == LUO_FDT_SESSION_COMPATIBLE => {}
        other => {
            return Err(ImageError::Compatible {
                found: other.unwrap_or("<none>").to_owned(),
                expected: LUO_FDT_SESSION_COMPATIBLE,
            });
        }
    }
    let area = sn
        .prop_as_u64(LUO_FDT_SESSION_HEADER)
        .ok_or_else(|| bad(format!("missing or short {LUO_FDT_SESSION_HEADER}")))?;
    let mut pages = vec![root, area];
    let h: luo_session_header_ser = read_obj(mem, area, "luo_session_header_ser")?;
    if h.count > LUO_SESSION_MAX {
        return Err(ImageError::TooMany {
            what: "luo-session-v2 sessions",
            count: h.count,
            max: LUO_SESSION_MAX,
        });
    }
    let mut sessions = Vec::new();
    for i in 0..h.count {
        let at = area + 8 + i * size_of::<luo_session_ser>() as u64;
        let s: luo_session_ser = read_obj(mem, at, "luo_session_ser")?;
        let end = s
            .name
            .iter()
            .position(|&b| b == 0)
            .ok_or(ImageError::SessionName { index: i as usize })?;
        let fs = s.file_set_ser;
        if fs.count > LUO_FILE_MAX {
            return Err(ImageError::TooMany {
                what: "luo-session-v2 files",
                count: fs.count,
                max: LUO_FILE_MAX,
            });
        }
        sessions.push(SessionImage {
            name: s.name[..end].to_vec(),
            files: fs.files.addr().as_u64(),
            count: fs.count,
            flat: true,
        });
    }
    let flbs = match t.find(LUO_FDT_FLB_NODE_NAME) {
        None => None,
        Some(n) => {
            match n.prop_as_str("compatible") {
                Some(c) if c == LUO_FDT_FLB_COMPATIBLE => {}
                other => {
                    return Err(ImageError::Compatible {
                        found: other.unwrap_or("<none>").to_owned(),
                        expected: LUO_FDT_FLB_COMPATIBLE,
                    });
                }
            }
            let pa = n
                .prop_as_u64(LUO_FDT_FLB_HEADER)
                .ok_or_else(|| bad(format!("missing or short {LUO_FDT_FLB_HEADER}")))?;
            let h: luo_flb_header_ser = read_obj(mem, pa, "luo_flb_header_ser")?;
            if h.pgcnt != LUO_FLB_PGCNT || h.count > LUO_FLB_MAX {
                return Err(ImageError::FlbHeader {
                    phys: pa,
                    pgcnt: h.pgcnt,
                    count: h.count,
                });
            }
            let mut map = BTreeMap::new();
            for i in 0..h.count {
                let at = pa
                    + size_of::<luo_flb_header_ser>() as u64
                    + i * size_of::<luo_flb_ser>() as u64;
                let e: luo_flb_ser = read_obj(mem, at, "luo_flb_ser")?;
                let name = cstr(&e.name).ok_or(ImageError::FlbHeader {
                    phys: pa,
                    pgcnt: h.pgcnt,
                    count: h.count,
                })?;
                map.insert(name.to_owned(), (e.data, e.count));
            }
            pages.push(pa);
            Some(map)
        }
    };
    Ok((
        Incoming {
            liveupdate_num: Some(num),
            sessions,
            flbs,
        },
        pages,
    ))
}
