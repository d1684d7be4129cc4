// SPDX-License-Identifier: GPL-2.0-only OR MIT
// A feature-negotiated handler reads the exact-match versions that came before it: each from
// the `vN` module beside its own (`memfd::next::T` → `memfd::v2::T`), through a migration that
// fills the feature header.
use luo_abi::features::Negotiated;
use luo_abi::file::{File, FileRef};
use luo_abi::handler::{Ctx, FileHandler, Finish, HandlerAbi, Migrate};
use luo_abi::{Errno, Result};
use luo_derive::liveupdate_handler;
use luo_generated::memfd::{next, v1, v2};
use zerocopy::FromZeros;

#[liveupdate_handler(
    name = "memfd",
    abi = luo_generated::memfd::next::memfd_luo_ser,
    features(SEALS(bit = 0, fields = [seals], required)),
    reads = ["memfd-v2", "memfd-v1"],
)]
pub struct Memfd;

#[liveupdate_handler]
impl FileHandler for Memfd {
    fn can_preserve(&self, _: &dyn File) -> bool {
        false
    }
    fn preserve(&self, _: &Ctx<'_, Self>, _: &dyn File) -> Result<(next::memfd_luo_ser, ())> {
        Err(Errno::EOPNOTSUPP)
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: next::memfd_luo_ser, _: ()) {}
    fn retrieve(&self, _: &Ctx<'_, Self>, _: Negotiated<next::memfd_luo_ser>) -> Result<FileRef> {
        Err(Errno::EOPNOTSUPP)
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, Negotiated<next::memfd_luo_ser>>) {}
}

impl Migrate<v2::memfd_luo_ser> for Memfd {
    fn migrate(&self, old: v2::memfd_luo_ser) -> Result<next::memfd_luo_ser> {
        let mut n = next::memfd_luo_ser::new_zeroed();
        n.features.supp = 1;
        n.features.req = 1;
        n.features.active = 1;
        n.pos = old.pos;
        n.size = old.size;
        n.seals = old.seals;
        Ok(n)
    }
}

impl Migrate<v1::memfd_luo_ser> for Memfd {
    fn migrate(&self, old: v1::memfd_luo_ser) -> Result<next::memfd_luo_ser> {
        self.migrate(v2::memfd_luo_ser::from(old))
    }
}

fn main() {
    assert_eq!(<Memfd as HandlerAbi>::READS, ["memfd-v2", "memfd-v1"]);
    assert_eq!(<Memfd as HandlerAbi>::entries().len(), 3);
}
