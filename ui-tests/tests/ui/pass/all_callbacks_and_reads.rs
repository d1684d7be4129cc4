// SPDX-License-Identifier: GPL-2.0-only OR MIT
// Every callback, a version read with its migration, private data and handler-scoped state.
use luo_abi::file::{File, FileId, FileRef};
use luo_abi::global::{HandlerState, StateCtx, StateObj};
use luo_abi::handler::{Ctx, FileHandler, Migrate, Finish, RetrieveStatus};
use luo_abi::{Errno, Result};
use luo_derive::{liveupdate_global_state, liveupdate_handler};
use luo_generated::memfd::{v1, v2};

#[liveupdate_global_state(abi = luo_generated::memfd::v1::memfd_luo_ser)]
pub struct Stats;

#[liveupdate_global_state]
impl HandlerState for Stats {
    type Outgoing = u64;
    type Incoming = u64;
    fn create(&self, _: &StateCtx<'_>) -> Result<(v1::memfd_luo_ser, u64)> {
        Err(Errno::ENOMEM)
    }
    fn restore(&self, _: &StateCtx<'_>, ser: v1::memfd_luo_ser) -> Result<u64> {
        Ok(ser.size)
    }
    fn destroy(&self, _: &StateCtx<'_>, _: StateObj<u64, u64>) {}
}

#[liveupdate_handler(
    compatible = "memfd-v2",
    abi = luo_generated::memfd::v2::memfd_luo_ser,
    reads = ["memfd-v1"],
    state = Stats,
)]
pub struct Memfd;

#[liveupdate_handler]
impl FileHandler for Memfd {
    type Private = Vec<u64>;

    fn can_preserve(&self, _: &dyn File) -> bool {
        true
    }
    fn preserve(&self, cx: &Ctx<'_, Self>, _: &dyn File) -> Result<(v2::memfd_luo_ser, Vec<u64>)> {
        let mut stats = cx.state().get_outgoing()?;
        *stats += 1;
        Err(Errno::EOPNOTSUPP)
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: v2::memfd_luo_ser, _: Vec<u64>) {}
    fn freeze(&self, _: &Ctx<'_, Self>, _: &dyn File, ser: &mut v2::memfd_luo_ser, _: &mut Vec<u64>) -> Result {
        ser.pos = 0;
        Ok(())
    }
    fn unfreeze(&self, _: &Ctx<'_, Self>, _: &dyn File, _: &v2::memfd_luo_ser, _: &mut Vec<u64>) {}
    fn retrieve(&self, cx: &Ctx<'_, Self>, _: v2::memfd_luo_ser) -> Result<FileRef> {
        let _stats = cx.state().get_incoming()?;
        Err(Errno::EOPNOTSUPP)
    }
    fn can_finish(&self, _: &Ctx<'_, Self>, _: Option<&dyn File>, s: RetrieveStatus) -> bool {
        s == RetrieveStatus::Retrieved
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, v2::memfd_luo_ser>) {}
    fn get_id(file: &dyn File) -> FileId {
        file.id()
    }
}

impl Migrate<v1::memfd_luo_ser> for Memfd {
    fn migrate(&self, old: v1::memfd_luo_ser) -> Result<v2::memfd_luo_ser> {
        Ok(v2::memfd_luo_ser {
            pos: old.pos,
            size: old.size,
            seals: 0,
            flags: 0,
            nr_folios: old.nr_folios,
            folios: old.folios,
        })
    }
}

fn main() {}
