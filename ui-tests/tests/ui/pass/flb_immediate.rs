// SPDX-License-Identifier: GPL-2.0-only OR MIT
// An FLB whose data word is its value (upstream's test FLBs): no preserved memory.
use std::sync::Arc;

use luo_abi::global::{FlbAbi, FlbState, StateCtx};
use luo_abi::Result;
use luo_derive::liveupdate_flb;

#[liveupdate_flb(compatible = "liveupdate-test-flb-v0", abi = u64, immediate)]
pub struct TestFlb0;

#[liveupdate_flb]
impl FlbState for TestFlb0 {
    type Outgoing = ();
    type Incoming = u64;
    fn preserve(&self, _: &StateCtx<'_>) -> Result<(u64, ())> {
        Ok((0xFEED_F00D_CAFE_BEE0, ()))
    }
    fn unpreserve(&self, _: &StateCtx<'_>, _: u64, _: Arc<()>) {}
    fn retrieve(&self, _: &StateCtx<'_>, data: u64) -> Result<u64> {
        Ok(data)
    }
    fn finish(&self, _: &StateCtx<'_>, _: Arc<u64>) {}
}

const _: () = assert!(<TestFlb0 as FlbAbi>::IMMEDIATE);

fn main() {}
