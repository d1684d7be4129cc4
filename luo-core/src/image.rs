// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Handover images: a handover's metadata saved to a file, for `luo inspect`.
//!
//! An image holds the KHO handover blob (preserved ranges and subtrees), the bases of the
//! memfd regions that crossed, and the bytes of every preserved *arena* page (LUO's state and
//! the handlers' serializations; memfd data pages stay out). Layout, native-endian:
//!
//! ```text
//! "LUOIMG01" | u64 arena_pages | u64 blob_len | u64 nr_regions | u64 nr_pages
//! blob bytes | u64 region_base × nr_regions | (u64 phys, 4096 bytes) × nr_pages
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use luo_abi::{Errno, PAGE_SIZE};
use zerocopy::FromBytes;

use crate::blocks::PhysRead;
use crate::error::ImageError;
use crate::kernel::Handover;
use crate::kho::{BLOB_MAGIC, BlobHeader, BlobRange, parse_blob_entries};
use crate::mem::ARENA_BASE;

const PAGE: u64 = PAGE_SIZE as u64;
const MAGIC: &[u8; 8] = b"LUOIMG01";

/// A decoded handover image.
pub struct Image {
    /// Arena size of the writing kernel, in pages.
    pub arena_pages: u64,
    /// Preserved ranges (compressed runs).
    pub ranges: Vec<BlobRange>,
    /// Subtrees: name → (phys, size).
    pub subtrees: BTreeMap<String, (u64, usize)>,
    /// Bases of the memfd regions that crossed.
    pub regions: Vec<u64>,
    blob: Vec<u8>,
    pages: HashMap<u64, Box<[u8]>>,
}

fn trunc(what: &'static str) -> ImageError {
    ImageError::Truncated { what, phys: 0 }
}

impl Image {
    /// Captures the metadata of a handover (which stays usable).
    pub fn from_handover(h: &Handover) -> Result<Image, ImageError> {
        let arena = &h.mem.arena;
        let read = |phys: u64, buf: &mut [u8]| {
            let off = phys.checked_sub(ARENA_BASE).ok_or(trunc("arena"))?;
            arena.read(off, buf).map_err(|_| trunc("arena"))
        };
        let mut hb = [0u8; size_of::<BlobHeader>()];
        read(h.mem.blob, &mut hb)?;
        let hdr = BlobHeader::read_from_bytes(&hb).map_err(|_| trunc("blob header"))?;
        if hdr.magic != BLOB_MAGIC {
            return Err(ImageError::BadMagic {
                phys: h.mem.blob,
                found: hdr.magic,
            });
        }
        let (ranges, subtrees) =
            parse_blob_entries(&hdr, h.mem.blob, arena.len(), read, |_, _| true)?;
        let blob_len = size_of::<BlobHeader>()
            + ranges.len() * size_of::<BlobRange>()
            + subtrees.len() * size_of::<crate::kho::BlobSubtree>();
        let mut blob = vec![0u8; blob_len];
        read(h.mem.blob, &mut blob)?;
        let arena_end = ARENA_BASE + arena.len();
        let mut pages = HashMap::new();
        for r in &ranges {
            for i in 0..(u64::from(r.count) << r.order) {
                let p = r.phys + i * PAGE;
                if (ARENA_BASE..arena_end).contains(&p) {
                    let mut b = vec![0u8; PAGE_SIZE].into_boxed_slice();
                    read(p, &mut b)?;
                    pages.insert(p, b);
                }
            }
        }
        Ok(Image {
            arena_pages: hdr.arena_pages,
            ranges,
            subtrees,
            regions: h.mem.regions.iter().map(|r| r.base()).collect(),
            blob,
            pages,
        })
    }

    /// The image as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        for n in [
            self.arena_pages,
            self.blob.len() as u64,
            self.regions.len() as u64,
            self.pages.len() as u64,
        ] {
            v.extend_from_slice(&n.to_ne_bytes());
        }
        v.extend_from_slice(&self.blob);
        for r in &self.regions {
            v.extend_from_slice(&r.to_ne_bytes());
        }
        let mut phys: Vec<&u64> = self.pages.keys().collect();
        phys.sort();
        for p in phys {
            v.extend_from_slice(&p.to_ne_bytes());
            if let Some(b) = self.pages.get(p) {
                v.extend_from_slice(b);
            }
        }
        v
    }

    /// Writes the image to `path`.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_bytes())
    }

    /// Reads an image file.
    pub fn load(path: &Path) -> Result<Image, ImageError> {
        let bytes = std::fs::read(path).map_err(|e| {
            ImageError::Host(
                e.raw_os_error()
                    .and_then(Errno::from_raw)
                    .unwrap_or(Errno::EIO),
            )
        })?;
        Image::from_bytes(&bytes)
    }

    /// Decodes image bytes; anything malformed is an [`ImageError`].
    pub fn from_bytes(b: &[u8]) -> Result<Image, ImageError> {
        let mut at = 0usize;
        let mut take = |n: usize, what: &'static str| -> Result<&[u8], ImageError> {
            let end = at.checked_add(n).ok_or(trunc(what))?;
            let s = b.get(at..end).ok_or(trunc(what))?;
            at = end;
            Ok(s)
        };
        let u64_of = |s: &[u8]| u64::from_ne_bytes(s.try_into().unwrap_or([0; 8]));
        if take(8, "image magic")? != MAGIC {
            return Err(ImageError::Descriptor("not a luo handover image".into()));
        }
        let arena_pages = u64_of(take(8, "image header")?);
        let blob_len =
            usize::try_from(u64_of(take(8, "image header")?)).map_err(|_| trunc("image header"))?;
        let nr_regions = u64_of(take(8, "image header")?);
        let nr_pages = u64_of(take(8, "image header")?);
        let blob = take(blob_len, "image blob")?.to_vec();
        let mut regions = Vec::new();
        for _ in 0..nr_regions {
            regions.push(u64_of(take(8, "image regions")?));
        }
        let mut pages = HashMap::new();
        for _ in 0..nr_pages {
            let p = u64_of(take(8, "image page")?);
            let data = take(PAGE_SIZE, "image page")?;
            pages.insert(p, data.to_vec().into_boxed_slice());
        }
        let hdr = BlobHeader::read_from_bytes(
            blob.get(..size_of::<BlobHeader>())
                .ok_or(trunc("blob header"))?,
        )
        .map_err(|_| trunc("blob header"))?;
        if hdr.magic != BLOB_MAGIC {
            return Err(ImageError::BadMagic {
                phys: 0,
                found: hdr.magic,
            });
        }
        let (ranges, subtrees) = parse_blob_entries(
            &hdr,
            0,
            blob.len() as u64,
            |phys, buf| {
                let s = usize::try_from(phys)
                    .ok()
                    .and_then(|p| blob.get(p..p.checked_add(buf.len())?))
                    .ok_or(trunc("image blob"))?;
                buf.copy_from_slice(s);
                Ok(())
            },
            |_, _| true,
        )?;
        Ok(Image {
            arena_pages,
            ranges,
            subtrees,
            regions,
            blob,
            pages,
        })
    }
}

impl PhysRead for Image {
    fn read_phys(&self, phys: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = phys.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let page = at & !(PAGE - 1);
            let off = (at - page) as usize;
            let src = self.pages.get(&page).ok_or(Errno::EFAULT)?;
            let n = (PAGE_SIZE - off).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&src[off..off + n]);
            done += n;
        }
        Ok(())
    }
}

impl Handover {
    /// The subtrees the handover publishes (name → (phys, size)).
    pub fn subtrees(&self) -> Result<BTreeMap<String, (u64, usize)>, ImageError> {
        Ok(Image::from_handover(self)?.subtrees)
    }

    /// Reads arena memory of the handover.
    pub fn read_phys(&self, phys: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let off = phys.checked_sub(ARENA_BASE).ok_or(Errno::EFAULT)?;
        self.mem.arena.read(off, buf)
    }

    /// Overwrites arena memory of the handover: fault injection for tests of corrupt images.
    pub fn write_phys(&self, phys: u64, data: &[u8]) -> Result<(), Errno> {
        let off = phys.checked_sub(ARENA_BASE).ok_or(Errno::EFAULT)?;
        self.mem.arena.write(off, data)
    }
}
