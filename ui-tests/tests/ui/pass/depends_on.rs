// SPDX-License-Identifier: GPL-2.0-only OR MIT
// A handler whose files depend on files of two other handlers: every raw handler struct (the
// writer and the reader of memfd-v1) carries the NULL-terminated `depends_on` array, and the
// callbacks reach the session's dependency calls through `Ctx::session`.
use luo_abi::file::{File, FileRef};
use luo_abi::handler::{Ctx, FileHandler, HandlerAbi, Migrate, Finish};
use luo_abi::{Errno, Result};
use luo_derive::liveupdate_handler;
use luo_generated::memfd::{v1, v2};

#[liveupdate_handler(
    compatible = "vfio-pci-v2",
    abi = luo_generated::memfd::v2::memfd_luo_ser,
    reads = ["vfio-pci-v1"],
    depends_on = ["memfd-v2", "iommufd-v1"],
)]
pub struct VfioPci;

#[liveupdate_handler]
impl FileHandler for VfioPci {
    fn can_preserve(&self, _: &dyn File) -> bool {
        false
    }
    fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(v2::memfd_luo_ser, ())> {
        let _token: u64 = cx.session().get_token_outgoing(file)?;
        Err(Errno::EOPNOTSUPP)
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: v2::memfd_luo_ser, _: ()) {}
    fn retrieve(&self, cx: &Ctx<'_, Self>, ser: v2::memfd_luo_ser) -> Result<FileRef> {
        let _iommufd: FileRef = cx.session().get_file_incoming(ser.pos)?;
        Err(Errno::EOPNOTSUPP)
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, v2::memfd_luo_ser>) {}
}

impl Migrate<v1::memfd_luo_ser> for VfioPci {
    fn migrate(&self, old: v1::memfd_luo_ser) -> Result<v2::memfd_luo_ser> {
        Ok(v2::memfd_luo_ser { pos: old.pos, size: old.size, seals: 0, flags: 0, nr_folios: old.nr_folios, folios: old.folios })
    }
}

fn names(fh: &luo_generated::liveupdate::liveupdate_file_handler) -> Vec<String> {
    let mut out = Vec::new();
    let mut p = fh.depends_on;
    // SAFETY: the macro builds a NULL-terminated array of NUL-terminated strings.
    unsafe {
        while !(*p).is_null() {
            out.push(std::ffi::CStr::from_ptr((*p).cast()).to_str().unwrap().to_owned());
            p = p.add(1);
        }
    }
    out
}

fn main() {
    let entries = <VfioPci as HandlerAbi>::entries();
    assert_eq!(entries.len(), 2);
    for e in entries {
        assert_eq!(names(e), ["memfd-v2", "iommufd-v1"]);
    }
}
