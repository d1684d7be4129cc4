// SPDX-License-Identifier: GPL-2.0-only OR MIT
// `Registration::link_flb` links FLBs only: a subsystem is registered on its own
// (`Registry::register_subsystem`), never linked to a handler.
use luo_abi::file::{File, FileRef};
use luo_abi::global::{StateCtx, Subsystem};
use luo_abi::handler::{Ctx, FileHandler, Finish, Registration};
use luo_abi::registry::Registry;
use luo_abi::{Errno, Result};
use luo_derive::{liveupdate_handler, liveupdate_subsystem};
use luo_generated::memfd::v2::memfd_luo_ser;

#[liveupdate_subsystem(name = "pool", abi = memfd_luo_ser)]
pub struct Pool;

#[liveupdate_subsystem]
impl Subsystem for Pool {
    type Outgoing = ();
    type Incoming = ();
    fn prepare(&self, _: &StateCtx<'_>) -> Result<(memfd_luo_ser, ())> {
        Err(Errno::ENOMEM)
    }
    fn cancel(&self, _: &StateCtx<'_>, _: ()) {}
    fn boot(&self, _: &StateCtx<'_>, _: memfd_luo_ser) -> Result<()> {
        Ok(())
    }
    fn finish(&self, _: &StateCtx<'_>, _: ()) {}
}

#[liveupdate_handler(compatible = "pooled-v1", abi = memfd_luo_ser)]
pub struct Pooled;

#[liveupdate_handler]
impl FileHandler for Pooled {
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

pub fn register(k: &impl Registry) -> Result {
    let pool = k.new_subsystem(Pool);
    let reg = Registration::new(Pooled, k.host(), ()).link_flb(pool);
    k.register_handler(reg)
}

fn main() {}
