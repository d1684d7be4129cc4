// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Variable-length records run by luo-core (luo-abi's `Ctx::set_trailer` / `record_entries` /
//! `read_record` and `StateCtx::reserve_trailer` / `data` with `FlbCell::outgoing_data`):
//! a handler hands over a header plus entries spanning several pages and reads them back
//! from the record the runtime claimed; a record too short for its header's count is refused;
//! `can_finish` of a file never retrieved reads its header without claiming it, and FINISH
//! then claims it once; an FLB's record is rewritten after its preserve and read back at
//! retrieve. Every case ends with no page left and no KHO violation.

use std::sync::{Arc, Mutex};

use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::global::{FlbState, StateCtx};
use luo_abi::handler::{Ctx, FileHandler, Finish, Registration, RetrieveStatus};
use luo_abi::registry::Registry;
use luo_abi::{Errno, Result};
use luo_core::{BackingKind, BootOptions, Handover, Kernel};
use luo_derive::{Abi, liveupdate_flb, liveupdate_handler};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A file's record header: how many `u64` entries follow, and how many the new kernel
/// should try to read (to check the bounds).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct list_ser {
    /// Entries written after the header.
    pub nr: u64,
    /// Entries the new kernel reads.
    pub read: u64,
}

/// The FLB's header: how many entries follow (rewritten after the preserve).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct table_ser {
    /// Entries in use.
    pub nr: u64,
}

const TABLE_CAP: usize = 1000;

/// An FLB whose data is a header plus up to `TABLE_CAP` entries, one added per file.
#[liveupdate_flb(compatible = "list-table-v1", abi = table_ser, lock = luo_abi::sync::StdBackend)]
pub struct Table;

#[liveupdate_flb]
impl FlbState for Table {
    type Outgoing = Mutex<Vec<u64>>;
    type Incoming = Vec<u64>;
    fn preserve(&self, cx: &StateCtx<'_>) -> Result<(table_ser, Mutex<Vec<u64>>)> {
        cx.reserve_trailer(8 * TABLE_CAP);
        Ok((table_ser { nr: 0 }, Mutex::new(Vec::new())))
    }
    fn unpreserve(&self, _: &StateCtx<'_>, _: table_ser, _: Arc<Mutex<Vec<u64>>>) {}
    fn retrieve(&self, cx: &StateCtx<'_>, ser: table_ser) -> Result<Vec<u64>> {
        let data = cx.data().ok_or(Errno::EINVAL)?;
        let nr = usize::try_from(ser.nr).map_err(|_| Errno::EINVAL)?;
        if nr > TABLE_CAP {
            return Err(Errno::EINVAL);
        }
        let mut buf = vec![0u8; 8 * nr];
        cx.kho()
            .read(data.checked_add(8).ok_or(Errno::EINVAL)?, &mut buf)?;
        Ok(buf
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect())
    }
    fn finish(&self, _: &StateCtx<'_>, _: Arc<Vec<u64>>) {}
}

/// The object behind a list file: its entries, and how many the new kernel reads.
pub struct List(Vec<u64>, u64);

/// What the new kernel saw: each retrieve's entries, and FINISH's verdicts.
#[derive(Default)]
pub struct Seen {
    lists: Vec<Vec<u64>>,
    table: Vec<u64>,
    not_retrieved: Vec<u64>,
}

/// The handler of list files; records what it saw in the new kernel.
#[liveupdate_handler(compatible = "list-v1", abi = list_ser, flbs = [Table])]
pub struct ListHandler(Arc<Mutex<Seen>>);

#[liveupdate_handler]
impl FileHandler for ListHandler {
    fn can_preserve(&self, file: &dyn File) -> bool {
        file.payload().is_some_and(|p| p.is::<List>())
    }
    fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(list_ser, ())> {
        let l = file
            .payload()
            .and_then(|p| p.downcast_ref::<List>())
            .ok_or(Errno::EINVAL)?;
        cx.set_trailer(l.0.as_bytes().to_vec());
        // One more entry in the FLB's record, rewritten in place.
        let flb = cx.global::<Table>();
        let out = flb.get_outgoing()?;
        let mut t = out.lock().map_err(|_| Errno::EIO)?;
        t.push(l.0.len() as u64);
        let data = flb.outgoing_data().ok_or(Errno::EINVAL)?;
        cx.kho().write(data, (t.len() as u64).as_bytes())?;
        cx.kho().write(
            data.checked_add(8).ok_or(Errno::EINVAL)?,
            t.as_slice().as_bytes(),
        )?;
        Ok((
            list_ser {
                nr: l.0.len() as u64,
                read: l.1,
            },
            (),
        ))
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: list_ser, _: ()) {}
    fn retrieve(&self, cx: &Ctx<'_, Self>, ser: list_ser) -> Result<FileRef> {
        let entries: Vec<u64> = cx.record_entries(ser.read as usize)?;
        let table = cx.global::<Table>().get_incoming()?;
        let mut seen = self.0.lock().map_err(|_| Errno::EIO)?;
        seen.table = table.to_vec();
        seen.lists.push(entries.clone());
        cx.open_synthetic(FileKind::Other, "list", Box::new(List(entries, ser.read)))
    }
    fn can_finish(&self, cx: &Ctx<'_, Self>, _: Option<&dyn File>, status: RetrieveStatus) -> bool {
        // A file never retrieved may go only if its header says it is empty.
        let mut nr = [0u8; 8];
        status != RetrieveStatus::NotRetrieved
            || (cx.read_record(0, &mut nr).is_ok() && u64::from_le_bytes(nr) <= 1)
    }
    fn finish(&self, cx: &Ctx<'_, Self>, how: Finish<'_, list_ser>) {
        if let Finish::NotRetrieved(ser) = how {
            // The record was claimed by the runtime for this call: its entries are readable.
            if let (Ok(e), Ok(mut seen)) =
                (cx.record_entries::<u64>(ser.nr as usize), self.0.lock())
            {
                seen.not_retrieved.extend(e);
            }
        }
    }
}

fn boot(h: Option<Handover>) -> (Kernel, Arc<Mutex<Seen>>) {
    let opts = BootOptions {
        backing: BackingKind::Memfd,
        ..BootOptions::default()
    };
    let k = Kernel::boot(&opts, h).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let table = k.new_flb(Table);
    k.register_handler(Registration::new(
        ListHandler(Arc::clone(&seen)),
        k.host(),
        (table,),
    ))
    .unwrap();
    (k, seen)
}

fn list(k: &Kernel, entries: Vec<u64>, read: u64) -> i32 {
    k.open_synthetic(FileKind::Other, "list", Box::new(List(entries, read)))
        .unwrap()
}

fn no_page_left(k: &Kernel) {
    let st = k.stats();
    assert_eq!(st.kho.incoming_pages, 0, "{st:?}");
    assert_eq!(st.preserved_beyond_root(), 0, "{st:?}");
    assert_eq!(k.kho().violations(), vec![]);
}

#[test]
fn entries_across_pages_and_bounds() {
    let (k, _) = boot(None);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "lists").unwrap();
    let big: Vec<u64> = (0..1500).map(|i| i * 3 + 1).collect();
    // Three pages of entries, read back whole.
    k.preserve_fd(s, list(&k, big.clone(), 1500), 1).unwrap();
    // Two entries, of which the new kernel tries to read far more than the record holds.
    k.preserve_fd(s, list(&k, vec![5, 6], 100_000), 2).unwrap();
    // One entry, never retrieved: FINISH claims it once and hands it over.
    k.preserve_fd(s, list(&k, vec![42], 1), 3).unwrap();
    let (k, seen) = boot(Some(k.kexec().unwrap()));
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "lists").unwrap();
    k.retrieve_fd(s, 1).unwrap();
    assert_eq!(k.retrieve_fd(s, 2), Err(Errno::EINVAL), "beyond the record");
    // The failed record was released at its retrieve; token 3's is claimed by FINISH.
    k.finish_session(s).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.lists, vec![big]);
    assert_eq!(
        seen.table,
        vec![1500, 2, 1],
        "the FLB's record, rewritten twice"
    );
    assert_eq!(seen.not_retrieved, vec![42]);
    drop(seen);
    k.close(s).unwrap();
    no_page_left(&k);
}

#[test]
fn can_finish_reads_an_unretrieved_header_and_finish_claims_it_once() {
    let (k, _) = boot(None);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "a").unwrap();
    k.preserve_fd(s, list(&k, vec![7], 1), 1).unwrap();
    k.preserve_fd(s, list(&k, vec![8, 9], 2), 2).unwrap();
    let (k, seen) = boot(Some(k.kexec().unwrap()));
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "a").unwrap();
    // Token 2's header says two entries: its can_finish refuses without retrieving it.
    assert_eq!(k.finish_session(s), Err(Errno::EBUSY));
    assert_eq!(
        k.finish_session(s),
        Err(Errno::EBUSY),
        "nothing was claimed"
    );
    k.retrieve_fd(s, 2).unwrap();
    k.finish_session(s).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.lists, vec![vec![8, 9]]);
    assert_eq!(
        seen.not_retrieved,
        vec![7],
        "token 1 finished from its claimed record"
    );
    drop(seen);
    k.close(s).unwrap();
    no_page_left(&k);
}
