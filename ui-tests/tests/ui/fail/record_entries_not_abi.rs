// SPDX-License-Identifier: GPL-2.0-only OR MIT
// The entries of a variable-length record are read as raw bytes from the handed-over memory:
// `Ctx::record_entries` only takes types valid for any bit pattern (a `bool` is not).
use luo_abi::file::{File, FileRef};
use luo_abi::handler::{Ctx, FileHandler, Finish};
use luo_abi::{Errno, Result};
use luo_derive::liveupdate_handler;
use luo_generated::iommufd::v1::iommufd_ser;

#[liveupdate_handler(compatible = "iommufd-v1", abi = iommufd_ser)]
pub struct Iommufd;

#[liveupdate_handler]
impl FileHandler for Iommufd {
    fn can_preserve(&self, _: &dyn File) -> bool {
        false
    }
    fn preserve(&self, _: &Ctx<'_, Self>, _: &dyn File) -> Result<(iommufd_ser, ())> {
        Err(Errno::EOPNOTSUPP)
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: iommufd_ser, _: ()) {}
    fn retrieve(&self, cx: &Ctx<'_, Self>, ser: iommufd_ser) -> Result<FileRef> {
        let _flags: Vec<bool> = cx.record_entries(ser.nr_hwpts as usize)?;
        Err(Errno::EOPNOTSUPP)
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, iommufd_ser>) {}
}

fn main() {}
