// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `abi_codec`: encode and decode 262,144 memfd folio records (1 GiB of 4 KiB pages).
//!
//! * [`Codec::Ours`]: the generated `luo_generated::memfd::memfd_luo_folio_ser` (a packed
//!   `pfn:52 / flags:12` bitfield unit plus `index`), written through its generated setters
//!   and read through its getters after the `AbiType::check_reserved` check every read runs;
//!   the array is cast to and from bytes with zerocopy, as the handler does.
//! * [`Codec::Zerocopy`]: the baseline, a hand-written zerocopy struct of two little-endian
//!   words with the bit packing done by hand.
//! * [`Codec::Postcard`]: context, serde + postcard (varints) of the same records.

use std::hint::black_box;

use luo_abi::abi::AbiType;
use luo_generated::memfd::{MEMFD_LUO_FOLIO_DIRTY, MEMFD_LUO_FOLIO_UPTODATE, memfd_luo_folio_ser};
use serde::{Deserialize, Serialize};
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Folios of 1 GiB of 4 KiB pages.
pub const FOLIOS: usize = 262_144;

/// Bytes of one record.
pub const RECORD: usize = 16;

/// One folio as the handler knows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Folio {
    /// Page frame number (52 bits).
    pub pfn: u64,
    /// `MEMFD_LUO_FOLIO_*` (12 bits).
    pub flags: u16,
    /// Page offset in the file.
    pub index: u64,
}

/// `n` folios: scattered pfns below 2^52, DIRTY | UPTODATE or UPTODATE only, ascending index.
pub fn folios(n: usize) -> Vec<Folio> {
    (0..n as u64)
        .map(|i| Folio {
            pfn: (0x10_0000 + i.wrapping_mul(0x9e37_79b9)) & ((1 << 52) - 1),
            flags: if i % 3 == 0 {
                MEMFD_LUO_FOLIO_UPTODATE as u16
            } else {
                (MEMFD_LUO_FOLIO_DIRTY | MEMFD_LUO_FOLIO_UPTODATE) as u16
            },
            index: i,
        })
        .collect()
}

/// The hand-written zerocopy record of the baseline.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ZcFolio {
    /// pfn (bits 0..52) and flags (bits 52..64).
    pub word: U64,
    /// Page offset.
    pub index: U64,
}

const PFN_MASK: u64 = (1 << 52) - 1;

/// Which codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// The generated accessors + AbiType check.
    Ours,
    /// Hand-written zerocopy.
    Zerocopy,
    /// serde + postcard.
    Postcard,
}

impl Codec {
    /// Every codec.
    pub const ALL: [Codec; 3] = [Codec::Ours, Codec::Zerocopy, Codec::Postcard];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Ours => "ours",
            Codec::Zerocopy => "zerocopy",
            Codec::Postcard => "postcard",
        }
    }

    /// Parses [`Codec::name`].
    pub fn parse(s: &str) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// Encodes with the generated setters into `out` (`FOLIOS * 16` bytes).
#[inline(never)]
pub fn encode_ours(src: &[Folio], out: &mut [u8]) {
    let recs = <[memfd_luo_folio_ser]>::mut_from_bytes(out).expect("whole records");
    for (dst, f) in recs.iter_mut().zip(src) {
        let mut r = memfd_luo_folio_ser::new_zeroed();
        r.set_pfn(f.pfn);
        r.set_flags(u64::from(f.flags));
        r.index = f.index;
        *dst = r;
    }
}

/// Decodes with the reserved-field check and the generated getters; `Err` on a record the
/// check rejects.
#[inline(never)]
pub fn decode_ours(bytes: &[u8], out: &mut [Folio]) -> luo_abi::Result {
    let recs =
        <[memfd_luo_folio_ser]>::ref_from_bytes(bytes).map_err(|_| luo_abi::Errno::EINVAL)?;
    for (dst, r) in out.iter_mut().zip(recs) {
        r.check_reserved()?;
        let index = r.index;
        *dst = Folio {
            pfn: r.pfn(),
            flags: r.flags() as u16,
            index,
        };
    }
    Ok(())
}

/// Encodes with hand-written zerocopy.
#[inline(never)]
pub fn encode_zerocopy(src: &[Folio], out: &mut [u8]) {
    let recs = <[ZcFolio]>::mut_from_bytes(out).expect("whole records");
    for (dst, f) in recs.iter_mut().zip(src) {
        *dst = ZcFolio {
            word: U64::new((f.pfn & PFN_MASK) | ((u64::from(f.flags) & 0xfff) << 52)),
            index: U64::new(f.index),
        };
    }
}

/// Decodes with hand-written zerocopy.
#[inline(never)]
pub fn decode_zerocopy(bytes: &[u8], out: &mut [Folio]) -> luo_abi::Result {
    let recs = <[ZcFolio]>::ref_from_bytes(bytes).map_err(|_| luo_abi::Errno::EINVAL)?;
    for (dst, r) in out.iter_mut().zip(recs) {
        let w = r.word.get();
        *dst = Folio {
            pfn: w & PFN_MASK,
            flags: (w >> 52) as u16,
            index: r.index.get(),
        };
    }
    Ok(())
}

/// Encodes with postcard into `out` (which must be large enough); the bytes written.
#[inline(never)]
pub fn encode_postcard(src: &[Folio], out: &mut [u8]) -> usize {
    postcard::to_slice(src, out)
        .expect("buffer large enough")
        .len()
}

/// Decodes with postcard.
#[inline(never)]
pub fn decode_postcard(bytes: &[u8]) -> Vec<Folio> {
    postcard::from_bytes(bytes).expect("valid postcard")
}

/// Buffers for one codec run: the records, the encoded bytes, the decoded records.
pub struct CodecBench {
    /// The input.
    pub src: Vec<Folio>,
    /// Encoded bytes (room for postcard's worst case).
    pub buf: Vec<u8>,
    /// Decoded records.
    pub out: Vec<Folio>,
    /// Bytes of the postcard encoding.
    pub postcard_len: usize,
}

impl CodecBench {
    /// `n` folios, encoded once by every codec so decode has input.
    pub fn new(n: usize) -> CodecBench {
        let src = folios(n);
        // A varint u64 takes at most 10 bytes, a u16 3; plus the length prefix.
        let buf = vec![0u8; n * 23 + 16];
        let mut b = CodecBench {
            src,
            buf,
            out: vec![Folio::default(); n],
            postcard_len: 0,
        };
        b.postcard_len = encode_postcard(&b.src, &mut b.buf);
        b
    }

    fn fixed(&mut self) -> (&[Folio], &mut [u8]) {
        let n = self.src.len() * RECORD;
        (&self.src, &mut self.buf[..n])
    }

    /// Encodes every record once with `c`.
    pub fn encode(&mut self, c: Codec) {
        match c {
            Codec::Ours => {
                let (s, b) = self.fixed();
                encode_ours(black_box(s), b);
            }
            Codec::Zerocopy => {
                let (s, b) = self.fixed();
                encode_zerocopy(black_box(s), b);
            }
            Codec::Postcard => {
                self.postcard_len = encode_postcard(black_box(&self.src), &mut self.buf);
            }
        }
        black_box(&self.buf);
    }

    /// Decodes every record once with `c` (after an [`CodecBench::encode`] with `c`).
    pub fn decode(&mut self, c: Codec) {
        let n = self.src.len() * RECORD;
        match c {
            Codec::Ours => decode_ours(black_box(&self.buf[..n]), &mut self.out).expect("valid"),
            Codec::Zerocopy => {
                decode_zerocopy(black_box(&self.buf[..n]), &mut self.out).expect("valid")
            }
            Codec::Postcard => {
                let v = decode_postcard(black_box(&self.buf[..self.postcard_len]));
                self.out.copy_from_slice(&v);
            }
        }
        black_box(&self.out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_agree() {
        let mut b = CodecBench::new(1000);
        b.encode(Codec::Ours);
        let ours = b.buf[..1000 * RECORD].to_vec();
        b.encode(Codec::Zerocopy);
        assert_eq!(ours, b.buf[..1000 * RECORD], "same bytes");
        for c in Codec::ALL {
            b.out.iter_mut().for_each(|f| *f = Folio::default());
            b.encode(c);
            b.decode(c);
            assert_eq!(b.out, b.src, "{c:?}");
            assert_eq!(Codec::parse(c.name()), Some(c));
        }
        // The generated getters read what the C bitfields would: pfn in the low 52 bits.
        let r = memfd_luo_folio_ser::read_from_bytes(&ours[..16]).unwrap();
        assert_eq!(r.pfn(), b.src[0].pfn);
        assert_eq!(r.flags(), u64::from(b.src[0].flags));
    }
}
