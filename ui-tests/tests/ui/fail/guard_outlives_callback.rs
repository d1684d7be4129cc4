// SPDX-License-Identifier: GPL-2.0-only OR MIT
// A guard borrows the callback's context and cannot be kept past it.
#![allow(unused_imports)]
use std::sync::Arc;

use luo_abi::file::{File, FileRef};
use luo_abi::global::{FlbState, StateCtx};
use luo_abi::handler::{Ctx, FileHandler, Finish};
use luo_abi::{Errno, Result};
use luo_derive::{liveupdate_flb, liveupdate_handler};
use luo_generated::memfd::v2::memfd_luo_ser;

#[liveupdate_flb(compatible = "pool-v1", abi = memfd_luo_ser)]
struct Pool;

thread_local! {
    static KEEP: std::cell::Cell<Option<Box<dyn std::any::Any>>> = const { std::cell::Cell::new(None) };
}

#[liveupdate_flb]
impl FlbState for Pool {
    type Outgoing = u64;
    type Incoming = u64;
    fn preserve(&self, _: &StateCtx<'_>) -> Result<(memfd_luo_ser, u64)> {
        Err(Errno::EINVAL)
    }
    fn unpreserve(&self, _: &StateCtx<'_>, _: memfd_luo_ser, _: Arc<u64>) {}
    fn retrieve(&self, _: &StateCtx<'_>, _: memfd_luo_ser) -> Result<u64> {
        Err(Errno::EINVAL)
    }
    fn finish(&self, _: &StateCtx<'_>, _: Arc<u64>) {}
}

#[liveupdate_handler(compatible = "memfd-v2", abi = luo_generated::memfd::v2::memfd_luo_ser, flbs = [Pool])]
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
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, memfd_luo_ser>) {}
    fn retrieve(&self, cx: &Ctx<'_, Self>, _: memfd_luo_ser) -> Result<FileRef> {
        let pool = cx.global::<Pool>().get_incoming()?;
        KEEP.with(|k| k.set(Some(Box::new(pool))));
        Err(Errno::EINVAL)
    }
}

fn main() {}
