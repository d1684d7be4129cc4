#![allow(unused_imports)]
// SPDX-License-Identifier: GPL-2.0-only OR MIT
use luo_abi::file::{File, FileRef};
use luo_abi::handler::{Ctx, FileHandler, Finish};
use luo_abi::{Errno, Result};
use luo_derive::liveupdate_handler;
use luo_derive::Abi;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
struct MySer {
    v: u64,
}

#[liveupdate_handler(compatible = "mine-v2", abi = MySer, reads = ["mine-v1"])]
struct Mine;

#[liveupdate_handler]
impl FileHandler for Mine {
    fn can_preserve(&self, _: &dyn File) -> bool {
        false
    }
    fn preserve(&self, _: &Ctx<'_, Self>, _: &dyn File) -> Result<(MySer, ())> {
        Err(Errno::EINVAL)
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: MySer, _: ()) {}
    fn retrieve(&self, _: &Ctx<'_, Self>, _: MySer) -> Result<FileRef> {
        Err(Errno::EINVAL)
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, MySer>) {}
}

fn main() {}
