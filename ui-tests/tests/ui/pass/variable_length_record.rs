// SPDX-License-Identifier: GPL-2.0-only OR MIT
// Variable-length records: a handler writes entries after its ABI struct (`Ctx::set_trailer`)
// and reads them back (`Ctx::record_entries`, `Ctx::read_record`, also from `can_finish` for a
// file never retrieved); an FLB reserves room after its struct (`StateCtx::reserve_trailer`),
// rewrites it after the preserve (`FlbCell::outgoing_data`) and reads it at retrieve
// (`StateCtx::data`).
use std::sync::{Arc, Mutex};

use luo_abi::file::{File, FileRef};
use luo_abi::global::{FlbState, StateCtx};
use luo_abi::handler::{Ctx, FileHandler, Finish, RetrieveStatus};
use luo_abi::kho::KhoExt;
use luo_abi::{Errno, Phys, Result};
use luo_derive::{liveupdate_flb, liveupdate_handler};
use luo_generated::iommufd::v1::{iommufd_hwpt_ser, iommufd_ser};
use luo_generated::pci::v3::{pci_dev_ser, pci_ser};
use zerocopy::{FromZeros, IntoBytes};

#[liveupdate_flb(compatible = "pci-v3", abi = pci_ser, lock = luo_abi::sync::StdBackend)]
pub struct Pci;

#[liveupdate_flb]
impl FlbState for Pci {
    type Outgoing = Mutex<Vec<pci_dev_ser>>;
    type Incoming = Vec<pci_dev_ser>;
    fn preserve(&self, cx: &StateCtx<'_>) -> Result<(pci_ser, Mutex<Vec<pci_dev_ser>>)> {
        cx.reserve_trailer(8 * size_of::<pci_dev_ser>());
        Ok((pci_ser { max_nr_devices: 8, nr_devices: 0 }, Mutex::new(Vec::new())))
    }
    fn unpreserve(&self, _: &StateCtx<'_>, _: pci_ser, _: Arc<Mutex<Vec<pci_dev_ser>>>) {}
    fn retrieve(&self, cx: &StateCtx<'_>, ser: pci_ser) -> Result<Vec<pci_dev_ser>> {
        let data = cx.data().ok_or(Errno::EINVAL)?;
        (0..u64::from(ser.nr_devices.min(ser.max_nr_devices)))
            .map(|i| {
                let at = data.checked_add(8 + 8 * i).ok_or(Errno::EINVAL)?;
                cx.kho().read_obj(Phys::<pci_dev_ser>::new(at))
            })
            .collect()
    }
    fn finish(&self, _: &StateCtx<'_>, _: Arc<Vec<pci_dev_ser>>) {}
}

#[liveupdate_handler(compatible = "iommufd-v1", abi = iommufd_ser, flbs = [Pci])]
pub struct Iommufd;

#[liveupdate_handler]
impl FileHandler for Iommufd {
    fn can_preserve(&self, _: &dyn File) -> bool {
        false
    }
    fn preserve(&self, cx: &Ctx<'_, Self>, _: &dyn File) -> Result<(iommufd_ser, ())> {
        // Rewrite the FLB's record after its preserve: one more entry.
        let flb = cx.global::<Pci>();
        let out = flb.get_outgoing()?;
        let mut v = out.lock().map_err(|_| Errno::EIO)?;
        v.push(pci_dev_ser { domain: 0, bdf: 8, refcount: 1 });
        let data = flb.outgoing_data().ok_or(Errno::EINVAL)?;
        let ser = pci_ser { max_nr_devices: 8, nr_devices: v.len() as u32 };
        cx.kho().write_obj(Phys::new(data), &ser)?;
        // This file's own record: a header and two entries.
        let mut e = iommufd_hwpt_ser::new_zeroed();
        e.token = 7;
        let e = [e; 2];
        cx.set_trailer(e.as_bytes().to_vec());
        Ok((iommufd_ser { nr_hwpts: 2 }, ()))
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: iommufd_ser, _: ()) {}
    fn retrieve(&self, cx: &Ctx<'_, Self>, ser: iommufd_ser) -> Result<FileRef> {
        let n = usize::try_from(ser.nr_hwpts).map_err(|_| Errno::EINVAL)?;
        let _entries: Vec<iommufd_hwpt_ser> = cx.record_entries(n)?;
        Err(Errno::EOPNOTSUPP)
    }
    fn can_finish(&self, cx: &Ctx<'_, Self>, _: Option<&dyn File>, status: RetrieveStatus) -> bool {
        let mut nr = [0u8; 8];
        status != RetrieveStatus::NotRetrieved
            || (cx.read_record(0, &mut nr).is_ok() && u64::from_le_bytes(nr) == 0)
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, iommufd_ser>) {}
}

fn main() {}
