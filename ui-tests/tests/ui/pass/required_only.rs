// SPDX-License-Identifier: GPL-2.0-only OR MIT
// A handler with only the required callbacks: the optional slots of its table are NULL.
use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::handler::{Ctx, FileHandler, Finish};
use luo_abi::{Errno, Result};
use luo_derive::liveupdate_handler;
use luo_generated::memfd::v2::memfd_luo_ser;

#[liveupdate_handler(compatible = "memfd-v2", abi = luo_generated::memfd::v2::memfd_luo_ser)]
pub struct Memfd;

#[liveupdate_handler]
impl FileHandler for Memfd {
    fn can_preserve(&self, file: &dyn File) -> bool {
        file.kind() == FileKind::Memfd
    }
    fn preserve(&self, _cx: &Ctx<'_, Self>, _file: &dyn File) -> Result<(memfd_luo_ser, ())> {
        Err(Errno::EOPNOTSUPP)
    }
    fn unpreserve(&self, _cx: &Ctx<'_, Self>, _file: &dyn File, _ser: memfd_luo_ser, _: ()) {}
    fn retrieve(&self, _cx: &Ctx<'_, Self>, _data: memfd_luo_ser) -> Result<FileRef> {
        Err(Errno::EOPNOTSUPP)
    }
    fn finish(&self, _cx: &Ctx<'_, Self>, _how: Finish<'_, memfd_luo_ser>) {}
}

const _: () = {
    assert!(<Memfd as FileHandler>::HAS_FINISH);
    assert!(!<Memfd as FileHandler>::HAS_FREEZE);
    assert!(!<Memfd as FileHandler>::HAS_GET_ID);
};

fn main() {}
