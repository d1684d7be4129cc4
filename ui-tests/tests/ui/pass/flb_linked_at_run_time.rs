// SPDX-License-Identifier: GPL-2.0-only OR MIT
// An FLB chosen at run time: not declared in `flbs = [...]` but linked to the registration
// with `Registration::link_flb` when the kernel's configuration asks for it (HugeTLB's pools
// are an FLB or a subsystem, per kernel). The handler keeps its own `Arc` of the cell, takes
// guards from it, and rewrites the FLB's handed-over struct after a preserve
// (`FlbCell::write_outgoing`).
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use luo_abi::file::{File, FileRef};
use luo_abi::global::{FlbCell, FlbState, StateCtx};
use luo_abi::handler::{Ctx, FileHandler, Finish, Registration};
use luo_abi::registry::Registry;
use luo_abi::{Errno, Result};
use luo_derive::{liveupdate_flb, liveupdate_handler};
use luo_generated::memfd::v2::memfd_luo_ser;
use zerocopy::FromZeros;

#[liveupdate_flb(compatible = "pool-v1", abi = memfd_luo_ser)]
pub struct Pool;

#[liveupdate_flb]
impl FlbState for Pool {
    type Outgoing = AtomicU64;
    type Incoming = u64;
    fn preserve(&self, _: &StateCtx<'_>) -> Result<(memfd_luo_ser, AtomicU64)> {
        Ok((memfd_luo_ser::new_zeroed(), AtomicU64::new(0)))
    }
    fn unpreserve(&self, _: &StateCtx<'_>, _: memfd_luo_ser, _: Arc<AtomicU64>) {}
    fn retrieve(&self, _: &StateCtx<'_>, ser: memfd_luo_ser) -> Result<u64> {
        Ok(ser.size)
    }
    fn finish(&self, _: &StateCtx<'_>, _: Arc<u64>) {}
}

#[liveupdate_handler(compatible = "pooled-v1", abi = memfd_luo_ser)]
pub struct Pooled {
    pool: Option<Arc<FlbCell<Pool>>>,
}

#[liveupdate_handler]
impl FileHandler for Pooled {
    fn can_preserve(&self, _: &dyn File) -> bool {
        false
    }
    fn preserve(&self, _: &Ctx<'_, Self>, _: &dyn File) -> Result<(memfd_luo_ser, ())> {
        if let Some(pool) = &self.pool {
            let files = pool.get_outgoing()?.fetch_add(1, Ordering::Relaxed) + 1;
            let mut table = memfd_luo_ser::new_zeroed();
            table.size = files;
            // The FLB was preserved before this file: its struct now counts the file too.
            pool.write_outgoing(&table)?;
        }
        Ok((memfd_luo_ser::new_zeroed(), ()))
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: memfd_luo_ser, _: ()) {}
    fn retrieve(&self, _: &Ctx<'_, Self>, _: memfd_luo_ser) -> Result<FileRef> {
        if let Some(pool) = &self.pool {
            let _files: u64 = *pool.get_incoming()?;
        }
        Err(Errno::EOPNOTSUPP)
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, memfd_luo_ser>) {}
}

/// Registers the handler with `k`, linked to a new `Pool` FLB only if `with_pool`.
pub fn register(k: &impl Registry, with_pool: bool) -> Result {
    let pool = with_pool.then(|| k.new_flb(Pool));
    let reg = Registration::new(Pooled { pool: pool.clone() }, k.host(), ());
    let reg = match pool {
        Some(p) => reg.link_flb(p),
        None => reg,
    };
    k.register_handler(reg)
}

fn main() {}
