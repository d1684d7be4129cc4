#![allow(unused_imports)]
// SPDX-License-Identifier: GPL-2.0-only OR MIT
use luo_abi::global::{HandlerState, StateCtx};
use luo_abi::{Errno, Result};
use luo_derive::liveupdate_global_state;
use luo_generated::memfd::v2::memfd_luo_ser;

#[liveupdate_global_state(abi = memfd_luo_ser)]
struct Counter;

#[liveupdate_global_state]
impl HandlerState for Counter {
    type Outgoing = ();
    type Incoming = ();
    fn create(&self, _: &StateCtx<'_>) -> Result<(memfd_luo_ser, ())> {
        Err(Errno::EINVAL)
    }
    fn restore(&self, _: &StateCtx<'_>, _: memfd_luo_ser) -> Result<()> {
        Err(Errno::EINVAL)
    }
}

fn main() {}
