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
use std::sync::Arc;

use luo_abi::{Errno, PAGE_SIZE};
use zerocopy::FromBytes;

use crate::blocks::PhysRead;
use crate::error::ImageError;
use crate::kernel::Handover;
use crate::kho::{BLOB_MAGIC, BlobHeader, BlobRange, MemHandover, parse_blob_entries};
use crate::mem::{
    ARENA_BASE, Backing, BackingKind, ExtRegion, HeapBacking, REGION_BASE, REGION_SPAN,
};

const PAGE: u64 = PAGE_SIZE as u64;
const MAGIC: &[u8; 8] = b"LUOIMG01";

/// The most bytes read as an image from something that is not a regular file (1 GiB).
pub const MAX_STREAM_IMAGE: u64 = 1 << 30;

/// The bytes of an image file. A regular file is read whole (its size is the user's); a
/// directory is `EISDIR`; anything else (a pipe, a device such as `/dev/zero`) is read up to
/// [`MAX_STREAM_IMAGE`] bytes, so no path makes this allocate without bound.
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if meta.is_dir() {
        return Err(std::io::Error::from_raw_os_error(
            rustix::io::Errno::ISDIR.raw_os_error(),
        ));
    }
    let mut bytes = Vec::new();
    if meta.is_file() {
        f.read_to_end(&mut bytes)?;
        return Ok(bytes);
    }
    (&mut f)
        .take(MAX_STREAM_IMAGE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STREAM_IMAGE {
        return Err(std::io::Error::other(format!(
            "more than {MAX_STREAM_IMAGE} bytes from something that is not a regular file; \
             save the image to a file first"
        )));
    }
    Ok(bytes)
}

/// The largest arena, in pages, a kernel booted from an image gets (64 GiB; its page
/// allocator's bitmaps then take 4 MiB). The arena size is a number the image claims.
pub const MAX_BOOT_ARENA_PAGES: u64 = 1 << 24;

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

    /// Reads an image file ([`read_file`]) and decodes it.
    pub fn load(path: &Path) -> Result<Image, ImageError> {
        let bytes = read_file(path).map_err(|e| ImageError::File(e.to_string()))?;
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

    /// The image holds every page of the range: it saved exactly the preserved arena pages.
    fn is_preserved(&self, phys: u64, len: usize) -> bool {
        let Some(end) = phys.checked_add(len.max(1) as u64) else {
            return false;
        };
        // Stops at the first page not saved, so a huge claimed length costs no more than the
        // pages the image holds.
        (phys / PAGE..end.div_ceil(PAGE)).all(|p| self.pages.contains_key(&(p * PAGE)))
    }
}

impl Handover {
    /// The handover an image describes, for booting a kernel from a saved image (`luo boot`):
    /// a sparse heap arena of the writing kernel's size holding every saved page at its
    /// address, the KHO blob placed after the last of them, and an empty memfd for each region
    /// that crossed (the image keeps no file data, so memfd contents read as zeros). Every
    /// number taken from the image is bounded before it sizes anything.
    pub fn from_image(img: &Image) -> Result<Handover, ImageError> {
        for &p in img.pages.keys() {
            if p < ARENA_BASE || !p.is_multiple_of(PAGE) {
                return Err(ImageError::OutOfRange { phys: p, pages: 1 });
            }
        }
        let too_big = |pages: Option<u64>| {
            ImageError::Descriptor(match pages {
                Some(n) => format!(
                    "the image needs an arena of {n} pages, more than the \
                     {MAX_BOOT_ARENA_PAGES} a kernel booted from an image gets"
                ),
                None => "the image's pages lie beyond any arena".to_owned(),
            })
        };
        // Arena pages up to the last saved one, then the blob's.
        let saved = img
            .pages
            .keys()
            .map(|&p| (p - ARENA_BASE) / PAGE + 1)
            .max()
            .unwrap_or(0);
        let blob_pages = (img.blob.len() as u64).div_ceil(PAGE);
        let need = saved.checked_add(blob_pages).ok_or_else(|| too_big(None))?;
        let arena_pages = img.arena_pages.max(need);
        if arena_pages > MAX_BOOT_ARENA_PAGES {
            return Err(too_big(Some(arena_pages)));
        }
        let blob_at = ARENA_BASE + saved * PAGE;
        let arena = HeapBacking::new(arena_pages * PAGE);
        let write = |phys: u64, data: &[u8]| {
            arena
                .write(phys - ARENA_BASE, data)
                .map_err(|_| ImageError::Truncated {
                    what: "image page",
                    phys,
                })
        };
        for (&p, data) in &img.pages {
            write(p, data)?;
        }
        write(blob_at, &img.blob)?;
        let mut regions = Vec::new();
        for &base in &img.regions {
            if base < REGION_BASE
                || !(base - REGION_BASE).is_multiple_of(REGION_SPAN)
                || base.checked_add(REGION_SPAN).is_none()
                || regions.iter().any(|r: &Arc<ExtRegion>| r.base() == base)
            {
                return Err(ImageError::Descriptor(format!(
                    "bad or repeated region base {base:#x}"
                )));
            }
            let r = ExtRegion::create(base, "luo-image-region").map_err(ImageError::Host)?;
            // The preserved pages in the region read as zeros (a sparse file).
            let end = img
                .ranges
                .iter()
                .filter(|x| x.phys >= base && x.phys - base < REGION_SPAN)
                .map(|x| {
                    let bytes = (u64::from(x.count) << x.order.min(32)).saturating_mul(PAGE);
                    (x.phys - base).saturating_add(bytes).min(REGION_SPAN)
                })
                .max()
                .unwrap_or(0);
            rustix::fs::ftruncate(r.fd(), end)
                .map_err(|e| ImageError::Host(crate::mem::host_err(e)))?;
            regions.push(Arc::new(r));
        }
        Ok(Handover {
            mem: MemHandover {
                arena: Arc::new(arena),
                arena_kind: BackingKind::Heap,
                regions,
                blob: blob_at,
            },
        })
    }

    /// The subtrees the handover publishes (name → (phys, size)).
    pub fn subtrees(&self) -> Result<BTreeMap<String, (u64, usize)>, ImageError> {
        Ok(Image::from_handover(self)?.subtrees)
    }

    /// Reads arena memory of the handover.
    pub fn read_phys(&self, phys: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let off = phys.checked_sub(ARENA_BASE).ok_or(Errno::EFAULT)?;
        self.mem.arena.read(off, buf)
    }

    /// Physical address of the KHO handover blob (in the arena).
    pub fn blob(&self) -> u64 {
        self.mem.blob
    }

    /// Overwrites arena memory of the handover: fault injection for tests of corrupt images.
    pub fn write_phys(&self, phys: u64, data: &[u8]) -> Result<(), Errno> {
        let off = phys.checked_sub(ARENA_BASE).ok_or(Errno::EFAULT)?;
        self.mem.arena.write(off, data)
    }
}
