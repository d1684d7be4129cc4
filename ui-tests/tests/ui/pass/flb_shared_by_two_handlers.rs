// SPDX-License-Identifier: GPL-2.0-only OR MIT
// One FLB linked to two handlers; each gets typed incoming/outgoing guards.
use std::sync::{Arc, Mutex};

use luo_abi::file::{File, FileRef};
use luo_abi::global::{FlbIncoming, FlbOutgoing, FlbState, StateCtx};
use luo_abi::handler::{Ctx, FileHandler, Finish};
use luo_abi::{Errno, Result};
use luo_derive::{liveupdate_flb, liveupdate_handler};
use luo_generated::memfd::v2::memfd_luo_ser;

#[liveupdate_flb(compatible = "iommu-core-v1", abi = memfd_luo_ser, lock = luo_abi::sync::StdBackend)]
pub struct Iommu;

#[liveupdate_flb]
impl FlbState for Iommu {
    type Outgoing = Mutex<Vec<u64>>;
    type Incoming = Vec<u64>;
    fn preserve(&self, _: &StateCtx<'_>) -> Result<(memfd_luo_ser, Mutex<Vec<u64>>)> {
        Err(Errno::ENOMEM)
    }
    fn unpreserve(&self, _: &StateCtx<'_>, _: memfd_luo_ser, _: Arc<Mutex<Vec<u64>>>) {}
    fn retrieve(&self, _: &StateCtx<'_>, _: memfd_luo_ser) -> Result<Vec<u64>> {
        Ok(Vec::new())
    }
    fn finish(&self, _: &StateCtx<'_>, _: Arc<Vec<u64>>) {}
}

macro_rules! handler {
    ($name:ident, $compat:literal) => {
        #[liveupdate_handler(compatible = $compat, abi = memfd_luo_ser, flbs = [Iommu])]
        pub struct $name;

        #[liveupdate_handler]
        impl FileHandler for $name {
            fn can_preserve(&self, _: &dyn File) -> bool {
                false
            }
            fn preserve(&self, cx: &Ctx<'_, Self>, _: &dyn File) -> Result<(memfd_luo_ser, ())> {
                let g: FlbOutgoing<'_, Iommu> = cx.global::<Iommu>().get_outgoing()?;
                g.lock().unwrap().push(1);
                Err(Errno::EOPNOTSUPP)
            }
            fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: memfd_luo_ser, _: ()) {}
            fn retrieve(&self, cx: &Ctx<'_, Self>, _: memfd_luo_ser) -> Result<FileRef> {
                let g: FlbIncoming<'_, Iommu> = cx.global::<Iommu>().get_incoming()?;
                let _n = g.len();
                Err(Errno::EOPNOTSUPP)
            }
            fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, memfd_luo_ser>) {}
        }
    };
}

handler!(Iommufd, "iommufd-v1");
handler!(VfioPci, "vfio-pci-v1");

fn main() {}
