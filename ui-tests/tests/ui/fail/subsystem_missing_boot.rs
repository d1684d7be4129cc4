// SPDX-License-Identifier: GPL-2.0-only OR MIT
// A subsystem restores its state at boot; without `boot` it could never be read.
#![allow(unused_imports)]
use luo_abi::global::{StateCtx, Subsystem};
use luo_abi::{Errno, Result};
use luo_derive::liveupdate_subsystem;
use luo_generated::memfd::v2::memfd_luo_ser;

#[liveupdate_subsystem(name = "huge", abi = memfd_luo_ser)]
struct Huge;

#[liveupdate_subsystem]
impl Subsystem for Huge {
    type Outgoing = ();
    type Incoming = ();
    fn prepare(&self, _: &StateCtx<'_>) -> Result<(memfd_luo_ser, ())> {
        Err(Errno::EINVAL)
    }
    fn cancel(&self, _: &StateCtx<'_>, _: ()) {}
    fn finish(&self, _: &StateCtx<'_>, _: ()) {}
}

fn main() {}
