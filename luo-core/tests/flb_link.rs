// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! An FLB chosen at run time (`Registration::link_flb`) whose handed-over struct is rewritten
//! after preserve (`FlbCell::write_outgoing`), run by luo-core across an in-process kexec.
//!
//! `tally-v1` files each add one to the FLB `tally-table-v1`'s count, which the FLB's own
//! `preserve` cannot know (it runs for the first file only): each file's preserve rewrites the
//! table. The new kernel's FLB must read the last count written, and a kernel that did not link
//! the FLB must hand nothing over for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::global::{FlbCell, FlbState, StateCtx};
use luo_abi::handler::{Ctx, FileHandler, Finish, Registration};
use luo_abi::registry::Registry;
use luo_abi::{Errno, Result};
use luo_core::{BootOptions, Handover, Kernel};
use luo_derive::{Abi, liveupdate_flb, liveupdate_handler};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// What a tally file hands over.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct tally_ser {
    /// The file's value.
    pub value: u64,
}

/// What the FLB hands over: how many files were preserved with it.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct tally_table_ser {
    /// Files preserved.
    pub files: u64,
}

/// The object behind a tally file.
pub struct Tally(u64);

/// The FLB: a count of the preserved files.
#[liveupdate_flb(compatible = "tally-table-v1", abi = tally_table_ser)]
pub struct Table;

#[liveupdate_flb]
impl FlbState for Table {
    type Outgoing = AtomicU64;
    type Incoming = u64;
    fn preserve(&self, _: &StateCtx<'_>) -> Result<(tally_table_ser, AtomicU64)> {
        // Runs before the first file's preserve: no file counted yet.
        Ok((tally_table_ser { files: 0 }, AtomicU64::new(0)))
    }
    fn unpreserve(&self, _: &StateCtx<'_>, _: tally_table_ser, _: Arc<AtomicU64>) {}
    fn retrieve(&self, _: &StateCtx<'_>, ser: tally_table_ser) -> Result<u64> {
        Ok(ser.files)
    }
    fn finish(&self, _: &StateCtx<'_>, _: Arc<u64>) {}
}

/// The handler; `table` is the FLB when the kernel linked it.
#[liveupdate_handler(compatible = "tally-v1", abi = tally_ser)]
pub struct TallyHandler {
    table: Option<Arc<FlbCell<Table>>>,
}

#[liveupdate_handler]
impl FileHandler for TallyHandler {
    fn can_preserve(&self, file: &dyn File) -> bool {
        file.payload().is_some_and(|p| p.is::<Tally>())
    }
    fn preserve(&self, _: &Ctx<'_, Self>, file: &dyn File) -> Result<(tally_ser, ())> {
        let t = file
            .payload()
            .and_then(|p| p.downcast_ref::<Tally>())
            .ok_or(Errno::EINVAL)?;
        if let Some(table) = &self.table {
            let files = table.get_outgoing()?.fetch_add(1, Ordering::SeqCst) + 1;
            table.write_outgoing(&tally_table_ser { files })?;
        }
        Ok((tally_ser { value: t.0 }, ()))
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: tally_ser, _: ()) {
        if let Some(table) = &self.table
            && let Ok(out) = table.get_outgoing()
        {
            let files = out.fetch_sub(1, Ordering::SeqCst) - 1;
            // The last file's unpreserve runs before the FLB's: still preserved here.
            let _ = table.write_outgoing(&tally_table_ser { files });
        }
    }
    fn retrieve(&self, cx: &Ctx<'_, Self>, ser: tally_ser) -> Result<FileRef> {
        if let Some(table) = &self.table {
            let _files = *table.get_incoming()?;
        }
        cx.open_synthetic(FileKind::Other, "tally", Box::new(Tally(ser.value)))
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, tally_ser>) {}
}

/// Registers the handler with `k`, linked to a new FLB when `link`; returns the FLB.
fn install(k: &Kernel, link: bool) -> Option<Arc<FlbCell<Table>>> {
    let table = link.then(|| k.new_flb(Table));
    let reg = Registration::new(
        TallyHandler {
            table: table.clone(),
        },
        k.host(),
        (),
    );
    let reg = match &table {
        Some(t) => reg.link_flb(Arc::clone(t)),
        None => reg,
    };
    k.register_handler(reg).unwrap();
    table
}

fn boot(h: Option<Handover>) -> Kernel {
    let opts = BootOptions {
        ..BootOptions::default()
    };
    Kernel::boot(&opts, h).unwrap()
}

/// Preserves `values` as tally files in one session and closes the session of `unpreserved`
/// more first (its files are unpreserved again); returns the handover.
fn preserve_and_kexec(k: &Kernel, values: &[u64], unpreserved: usize) -> Handover {
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "tally").unwrap();
    let x = k.create_session(dev, "gone").unwrap();
    for i in 0..unpreserved {
        let fd = k
            .open_synthetic(FileKind::Other, "tally", Box::new(Tally(0)))
            .unwrap();
        k.preserve_fd(x, fd, i as u64).unwrap();
    }
    for (i, &v) in values.iter().enumerate() {
        let fd = k
            .open_synthetic(FileKind::Other, "tally", Box::new(Tally(v)))
            .unwrap();
        k.preserve_fd(s, fd, i as u64).unwrap();
    }
    k.close(x).unwrap();
    k.kexec().unwrap()
}

#[test]
fn linked_flb_hands_over_the_last_struct_written() {
    let k = boot(None);
    let table = install(&k, true).unwrap();
    // Not preserved yet: nothing to rewrite.
    assert_eq!(
        table.write_outgoing(&tally_table_ser { files: 9 }),
        Err(Errno::ENODATA)
    );
    let h = preserve_and_kexec(&k, &[10, 20, 30], 2);
    drop(k);

    let k = boot(Some(h));
    let table = install(&k, true).unwrap();
    // Written 0 by the FLB's preserve, then rewritten by each of the 5 files' preserve and
    // the 2 unpreserves of the closed session: 3.
    assert_eq!(*table.get_incoming().unwrap(), 3);
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "tally").unwrap();
    for (token, want) in [(0, 10), (1, 20), (2, 30)] {
        let fd = k.retrieve_fd(s, token).unwrap();
        let f = k.file(fd).unwrap();
        let got = f.payload().and_then(|p| p.downcast_ref::<Tally>());
        assert_eq!(got.map(|t| t.0), Some(want));
    }
    k.finish_session(s).unwrap();
    k.close(s).unwrap();
    assert_eq!(table.get_incoming().err(), Some(Errno::ENODATA));
    let st = k.stats();
    assert_eq!(st.kho.incoming_pages, 0, "{st:?}");
    assert_eq!(st.preserved_beyond_root(), 0, "{st:?}");
}

#[test]
fn an_flb_not_linked_is_not_handed_over() {
    let k = boot(None);
    assert!(install(&k, false).is_none());
    let h = preserve_and_kexec(&k, &[1, 2], 0);
    drop(k);

    // The new kernel links it, but the old one never preserved it.
    let k = boot(Some(h));
    let table = install(&k, true).unwrap();
    let e = table.get_incoming().err();
    assert!(matches!(e, Some(Errno::ENOENT | Errno::ENODATA)), "{e:?}");
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "tally").unwrap();
    // Its files depend on an FLB with no incoming data: retrieve says so.
    assert!(k.retrieve_fd(s, 0).is_err());
    k.finish_session(s).unwrap();
    k.close(s).unwrap();
    let st = k.stats();
    assert_eq!(st.kho.incoming_pages, 0, "{st:?}");
}
