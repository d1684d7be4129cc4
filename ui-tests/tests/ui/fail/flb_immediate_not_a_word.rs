// SPDX-License-Identifier: GPL-2.0-only OR MIT
// An `immediate` FLB hands over its data word itself: its ABI type must be 8 bytes.
use std::sync::Arc;

use luo_abi::global::{FlbState, StateCtx};
use luo_abi::Result;
use luo_derive::liveupdate_flb;
use luo_generated::memfd::v2::memfd_luo_ser;

#[liveupdate_flb(compatible = "iommu-core-v1", abi = memfd_luo_ser, immediate)]
pub struct Iommu;

#[liveupdate_flb]
impl FlbState for Iommu {
    type Outgoing = ();
    type Incoming = ();
    fn preserve(&self, _: &StateCtx<'_>) -> Result<(memfd_luo_ser, ())> {
        Err(luo_abi::Errno::ENOMEM)
    }
    fn retrieve(&self, _: &StateCtx<'_>, _: memfd_luo_ser) -> Result<()> {
        Ok(())
    }
    fn unpreserve(&self, _: &StateCtx<'_>, _: memfd_luo_ser, _: Arc<()>) {}
    fn finish(&self, _: &StateCtx<'_>, _: Arc<()>) {}
}

fn main() {}
