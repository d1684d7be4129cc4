// SPDX-License-Identifier: GPL-2.0-only OR MIT
// A feature-negotiated handler (memfd `next`): a versionless name, feature bits, and
// optional fields handed over as `Option`s.
use luo_abi::features::Negotiated;
use luo_abi::file::{File, FileRef};
use luo_abi::handler::{Ctx, FileHandler, Finish};
use luo_abi::{Errno, Result};
use luo_derive::liveupdate_handler;
use luo_generated::memfd::next::memfd_luo_ser;

#[liveupdate_handler(
    name = "memfd",
    abi = luo_generated::memfd::next::memfd_luo_ser,
    features(
        SEALS(bit = 0, fields = [seals], required),
        FOLIOS(bit = 1, fields = [nr_folios, folios]),
    ),
    active = [SEALS],
)]
pub struct Memfd;

#[liveupdate_handler]
impl FileHandler for Memfd {
    fn can_preserve(&self, _: &dyn File) -> bool {
        false
    }
    fn preserve(&self, cx: &Ctx<'_, Self>, _: &dyn File) -> Result<(memfd_luo_ser, ())> {
        cx.set_feature(Self::FOLIOS, true);
        Err(Errno::EOPNOTSUPP)
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: memfd_luo_ser, _: ()) {}
    fn retrieve(&self, _: &Ctx<'_, Self>, data: Negotiated<memfd_luo_ser>) -> Result<FileRef> {
        let _seals: Option<u32> = data.get(Self::SEALS, |s| s.seals);
        let _folios: Option<u64> = data.get(Self::FOLIOS, |s| s.nr_folios);
        Err(Errno::EOPNOTSUPP)
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, Negotiated<memfd_luo_ser>>) {}
}

fn main() {}
