// SPDX-License-Identifier: GPL-2.0-only OR MIT
// `depends_on` names handlers by compatible string, not by type.
use luo_abi::file::{File, FileRef};
use luo_abi::handler::{Ctx, FileHandler, Finish};
use luo_abi::{Errno, Result};
use luo_derive::liveupdate_handler;
use luo_generated::memfd::v2::memfd_luo_ser;

pub struct Iommufd;

#[liveupdate_handler(compatible = "vfio-pci-v2", abi = memfd_luo_ser, depends_on = [Iommufd])]
pub struct VfioPci;

#[liveupdate_handler]
impl FileHandler for VfioPci {
    fn can_preserve(&self, _: &dyn File) -> bool {
        false
    }
    fn preserve(&self, _: &Ctx<'_, Self>, _: &dyn File) -> Result<(memfd_luo_ser, ())> {
        Err(Errno::EOPNOTSUPP)
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: memfd_luo_ser, _: ()) {}
    fn retrieve(&self, _: &Ctx<'_, Self>, _: memfd_luo_ser) -> Result<FileRef> {
        Err(Errno::EOPNOTSUPP)
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, memfd_luo_ser>) {}
}

fn main() {}
