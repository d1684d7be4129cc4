#![allow(unused_imports)]
// SPDX-License-Identifier: GPL-2.0-only OR MIT
use luo_abi::file::{File, FileRef};
use luo_abi::handler::{Ctx, FileHandler, Finish};
use luo_abi::{Errno, Result};
use luo_derive::liveupdate_handler;
use luo_generated::memfd::next::memfd_luo_ser;

#[liveupdate_handler(name = "memfd", abi = luo_generated::memfd::next::memfd_luo_ser, features(SEALS(bit = 64, fields = [seals])))]
struct Memfd;

#[liveupdate_handler]
impl FileHandler for Memfd {
    fn can_preserve(&self, _: &dyn File) -> bool {
        false
    }
    fn preserve(&self, _: &Ctx<'_, Self>, _: &dyn File) -> Result<(memfd_luo_ser, ())> {
        Err(Errno::EINVAL)
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: memfd_luo_ser, _: ()) {}
    fn retrieve(&self, _: &Ctx<'_, Self>, _: luo_abi::features::Negotiated<memfd_luo_ser>) -> Result<FileRef> {
        Err(Errno::EINVAL)
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, luo_abi::features::Negotiated<memfd_luo_ser>>) {}
}

fn main() {}
