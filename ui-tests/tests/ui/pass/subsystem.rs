// SPDX-License-Identifier: GPL-2.0-only OR MIT
// A subsystem with its own lifecycle, used by a handler; freeze is optional.
use luo_abi::file::{File, FileRef};
use luo_abi::global::{StateCtx, Subsystem, SubsystemIncoming};
use luo_abi::handler::{Ctx, FileHandler, Finish};
use luo_abi::{Errno, Result};
use luo_derive::{liveupdate_handler, liveupdate_subsystem};
use luo_generated::memfd::v2::memfd_luo_ser;

#[liveupdate_subsystem(name = "hugetlb", abi = memfd_luo_ser)]
pub struct Hugetlb;

#[liveupdate_subsystem]
impl Subsystem for Hugetlb {
    type Outgoing = [u64; 4];
    type Incoming = [u64; 4];
    fn prepare(&self, _: &StateCtx<'_>) -> Result<(memfd_luo_ser, [u64; 4])> {
        Err(Errno::ENOMEM)
    }
    fn cancel(&self, _: &StateCtx<'_>, _: [u64; 4]) {}
    fn boot(&self, _: &StateCtx<'_>, _: memfd_luo_ser) -> Result<[u64; 4]> {
        Ok([0; 4])
    }
    fn finish(&self, _: &StateCtx<'_>, _: [u64; 4]) {}
}

#[liveupdate_handler(compatible = "huge-memfd-v1", abi = memfd_luo_ser, subsystems = [Hugetlb])]
pub struct HugeMemfd;

#[liveupdate_handler]
impl FileHandler for HugeMemfd {
    fn can_preserve(&self, _: &dyn File) -> bool {
        false
    }
    fn preserve(&self, cx: &Ctx<'_, Self>, _: &dyn File) -> Result<(memfd_luo_ser, ())> {
        let mut g = cx.global::<Hugetlb>().get_outgoing()?;
        g[0] += 1;
        Err(Errno::EOPNOTSUPP)
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: memfd_luo_ser, _: ()) {}
    fn retrieve(&self, cx: &Ctx<'_, Self>, _: memfd_luo_ser) -> Result<FileRef> {
        let g: SubsystemIncoming<'_, Hugetlb> = cx.global::<Hugetlb>().get_incoming()?;
        let _ = g[0];
        Err(Errno::EOPNOTSUPP)
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, memfd_luo_ser>) {}
}

const _: () = assert!(!<Hugetlb as Subsystem>::HAS_FREEZE);

fn main() {}
