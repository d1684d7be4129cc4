// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `luo inspect IMAGE`: decode a handover image (sessions, files, FLBs, preserved ranges) as
//! text or JSON.

use std::fmt::Write as _;

use luo_generated::luo::luo_file_ser;
use luo_generated::luo::v5::{LUO_FILES_PER_BLOCK, LUO_KHO_ENTRY_NAME};
use serde::Serialize;

use luo_core::blocks::{PhysRead, read_chain};
use luo_core::error::ImageError;
use luo_core::image::Image;
use luo_core::luo::global::{EXT_SUBTREE, read_ext};
use luo_core::luo::read_incoming;
use luo_core::mem::{ARENA_BASE, REGION_BASE};
use luo_core::util::lossy;
use luo_handlers::memfd::{RecordView, Version, decode, record_size};

/// A decoded image.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The LUO format found (`luo-v1`, `luo-v1+flb`, `luo-v5`, `next`; `None` without a
    /// `"LUO"` subtree).
    pub format: Option<String>,
    /// `luo_ser.liveupdate_num` (`None` without a `"LUO"` subtree).
    pub liveupdate_num: Option<u64>,
    /// Sessions in handover order.
    pub sessions: Vec<SessionReport>,
    /// FLB entries (`None` without FLB data).
    pub flbs: Option<Vec<FlbReport>>,
    /// Handler global states (model extension subtree).
    pub global_states: Vec<(String, u64)>,
    /// Subsystems (model extension subtree).
    pub subsystems: Vec<(String, u64)>,
    /// KHO subtrees.
    pub subtrees: Vec<SubtreeReport>,
    /// The preserved-memory map.
    pub preserved: PreservedReport,
}

/// One session.
#[derive(Clone, Debug, Serialize)]
pub struct SessionReport {
    /// Name (lossy UTF-8).
    pub name: String,
    /// Files in preservation order.
    pub files: Vec<FileReport>,
}

/// One preserved file.
#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    /// Userspace token.
    pub token: u64,
    /// Handler compatible.
    pub compatible: String,
    /// The handler's data handle.
    pub data: u64,
    /// For memfd files (`memfd-v1`, `memfd-v2`, `memfd`): the decoded `memfd_luo_ser`.
    pub memfd: Option<MemfdReport>,
}

/// A decoded `memfd_luo_ser` (any version; `memfd-v1` has no seals).
#[derive(Clone, Debug, Serialize)]
pub struct MemfdReport {
    /// File position.
    pub pos: u64,
    /// Size in bytes.
    pub size: u64,
    /// Seals.
    pub seals: u32,
    /// Folios.
    pub nr_folios: u64,
}

/// One FLB entry.
#[derive(Clone, Debug, Serialize)]
pub struct FlbReport {
    /// Compatible.
    pub name: String,
    /// Data handle.
    pub data: u64,
    /// Dependent files.
    pub count: u64,
}

/// One KHO subtree.
#[derive(Clone, Debug, Serialize)]
pub struct SubtreeReport {
    /// Name.
    pub name: String,
    /// Address.
    pub phys: u64,
    /// Size in bytes.
    pub size: usize,
}

/// Preserved memory.
#[derive(Clone, Debug, Serialize)]
pub struct PreservedReport {
    /// Runs of same-order blocks.
    pub ranges: Vec<(u64, u32, u32)>,
    /// Total preserved pages.
    pub pages: u64,
    /// Of which in the metadata arena.
    pub arena_pages: u64,
    /// Of which in memfd regions.
    pub region_pages: u64,
    /// Memfd regions that crossed.
    pub regions: usize,
}

/// Decodes a memfd's `memfd_luo_ser` of any version (`memfd-v1`, `memfd-v2`, `memfd`) with
/// the memfd handler's own decoder, so the viewer shows what RETRIEVE_FD would accept.
fn decode_memfd(img: &Image, compatible: &str, data: u64) -> Option<RecordView> {
    let version = Version::from_compatible(compatible)?;
    let mut b = vec![0u8; record_size(version)];
    img.read_phys(data, &mut b).ok()?;
    decode(version, &b).ok()
}

/// Decodes `img`.
pub fn inspect(img: &Image) -> Result<Report, ImageError> {
    let luo = img.subtrees.get(LUO_KHO_ENTRY_NAME).copied();
    let (inc, _) = read_incoming(img, luo)?;
    let mut sessions = Vec::new();
    for s in &inc.sessions {
        let chain = if s.flat {
            // 6.19/7.0: one contiguous `luo_file_ser[]`.
            let mut entries = vec![0u8; s.count as usize * size_of::<luo_file_ser>()];
            if !entries.is_empty() {
                img.read_phys(s.files, &mut entries)
                    .map_err(|_| ImageError::Truncated {
                        what: "luo_file_ser[]",
                        phys: s.files,
                    })?;
            }
            luo_core::blocks::Chain {
                blocks: vec![s.files],
                entries,
            }
        } else {
            read_chain(
                img,
                s.files,
                size_of::<luo_file_ser>(),
                LUO_FILES_PER_BLOCK,
                "file",
            )?
        };
        let found = (chain.entries.len() / size_of::<luo_file_ser>()) as u64;
        if found != s.count {
            return Err(ImageError::FileCount {
                session: lossy(&s.name),
                expected: s.count,
                found,
            });
        }
        let mut files = Vec::new();
        for e in chain.entries.chunks_exact(size_of::<luo_file_ser>()) {
            let f: luo_file_ser =
                zerocopy::FromBytes::read_from_bytes(e).map_err(|_| ImageError::Truncated {
                    what: "luo_file_ser",
                    phys: s.files,
                })?;
            let compatible = lossy(&f.compatible);
            let memfd = decode_memfd(img, &compatible, f.data).map(|m| MemfdReport {
                pos: m.pos,
                size: m.size,
                seals: m.seals,
                nr_folios: m.nr_folios,
            });
            files.push(FileReport {
                token: f.token,
                compatible,
                data: f.data,
                memfd,
            });
        }
        sessions.push(SessionReport {
            name: lossy(&s.name),
            files,
        });
    }
    let flbs = inc.flbs.map(|m| {
        m.into_iter()
            .map(|(name, (data, count))| FlbReport { name, data, count })
            .collect()
    });
    let ext = match img.subtrees.get(EXT_SUBTREE) {
        Some(&(p, _)) => read_ext(img, p)?,
        None => Default::default(),
    };
    let mut pages = 0;
    let mut arena_pages = 0;
    for r in &img.ranges {
        let n = u64::from(r.count) << r.order;
        pages += n;
        if r.phys >= ARENA_BASE && r.phys < REGION_BASE {
            arena_pages += n;
        }
    }
    let format = match luo {
        Some((root, size)) => Some(match luo_core::luo::detect_format(img, root, size)? {
            luo_core::LuoFormat::V1 | luo_core::LuoFormat::V1Flb => {
                match luo_core::luo::fdt_luo::flavour(img, root, size)? {
                    luo_core::LuoFormat::V1Flb => "luo-v1+flb",
                    _ => "luo-v1",
                }
            }
            luo_core::LuoFormat::V5 => "luo-v5",
            luo_core::LuoFormat::Next => "next",
        }),
        None => None,
    };
    Ok(Report {
        format: format.map(str::to_owned),
        liveupdate_num: inc.liveupdate_num,
        sessions,
        flbs,
        global_states: ext.global_state.into_iter().collect(),
        subsystems: ext.subsystems.into_iter().collect(),
        subtrees: img
            .subtrees
            .iter()
            .map(|(n, &(phys, size))| SubtreeReport {
                name: n.clone(),
                phys,
                size,
            })
            .collect(),
        preserved: PreservedReport {
            ranges: img
                .ranges
                .iter()
                .map(|r| (r.phys, r.order, r.count))
                .collect(),
            pages,
            arena_pages,
            region_pages: pages - arena_pages,
            regions: img.regions.len(),
        },
    })
}

impl Report {
    /// Human-readable text.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        match self.liveupdate_num {
            Some(n) => {
                let f = self.format.as_deref().unwrap_or("?");
                let _ = writeln!(s, "LUO ({f}): liveupdate_num {n}");
            }
            None => {
                let _ = writeln!(s, "no LUO state (fresh boot)");
            }
        }
        let _ = writeln!(s, "sessions: {}", self.sessions.len());
        for se in &self.sessions {
            let _ = writeln!(s, "  {:?}: {} files", se.name, se.files.len());
            for f in &se.files {
                let _ = write!(
                    s,
                    "    token {:#x}  {}  data {:#x}",
                    f.token, f.compatible, f.data
                );
                if let Some(m) = &f.memfd {
                    let _ = write!(
                        s,
                        "  (size {}, pos {}, seals {:#x}, {} folios)",
                        m.size, m.pos, m.seals, m.nr_folios
                    );
                }
                s.push('\n');
            }
        }
        match &self.flbs {
            None => {
                let _ = writeln!(s, "FLBs: none");
            }
            Some(f) => {
                let _ = writeln!(s, "FLBs: {}", f.len());
                for e in f {
                    let _ = writeln!(s, "  {}  data {:#x}  count {}", e.name, e.data, e.count);
                }
            }
        }
        for (n, d) in &self.global_states {
            let _ = writeln!(s, "global state {n}: data {d:#x}");
        }
        for (n, d) in &self.subsystems {
            let _ = writeln!(s, "subsystem {n}: data {d:#x}");
        }
        let _ = writeln!(s, "subtrees:");
        for t in &self.subtrees {
            let _ = writeln!(s, "  {:?} at {:#x}, {} bytes", t.name, t.phys, t.size);
        }
        let p = &self.preserved;
        let _ = writeln!(
            s,
            "preserved: {} pages in {} runs ({} arena, {} in {} memfd regions)",
            p.pages,
            p.ranges.len(),
            p.arena_pages,
            p.region_pages,
            p.regions
        );
        for (phys, order, count) in &p.ranges {
            let _ = writeln!(s, "  {phys:#014x}  order {order}  x{count}");
        }
        s
    }

    /// JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
