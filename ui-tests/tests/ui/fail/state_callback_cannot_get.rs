// SPDX-License-Identifier: GPL-2.0-only OR MIT
// The state's own callbacks run under its lock: they get no way to reach any state.
#![allow(unused_imports)]
use std::sync::Arc;

use luo_abi::file::{File, FileRef};
use luo_abi::global::{FlbState, StateCtx};
use luo_abi::handler::{Ctx, FileHandler, RetrieveStatus};
use luo_abi::{Errno, Result};
use luo_derive::{liveupdate_flb, liveupdate_handler};
use luo_generated::memfd::v2::memfd_luo_ser;

#[liveupdate_flb(compatible = "pool-v1", abi = memfd_luo_ser)]
struct Pool;

#[liveupdate_flb]
impl FlbState for Pool {
    type Outgoing = u64;
    type Incoming = u64;
    fn preserve(&self, _: &StateCtx<'_>) -> Result<(memfd_luo_ser, u64)> {
        Err(Errno::EINVAL)
    }
    fn unpreserve(&self, _: &StateCtx<'_>, _: memfd_luo_ser, _: Arc<u64>) {}
    fn retrieve(&self, cx: &StateCtx<'_>, _: memfd_luo_ser) -> Result<u64> {
        let _g = cx.global::<Pool>();
        Err(Errno::EINVAL)
    }
    fn finish(&self, _: &StateCtx<'_>, _: Arc<u64>) {}
}

fn main() {}
