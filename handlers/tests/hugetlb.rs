// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! HugeTLB both ways, side by side: what the FLB form (upstream's series) and the subsystem
//! form (LUO v4) do to the HugeTLB pools when only a non-HugeTLB guest_memfd is preserved,
//! when no file is preserved, and with a HugeTLB memfd that is retrieved and one that is not;
//! the posted `hugetlb_ser` (only the preserved pages cross, per huge page size) and what the
//! new kernel refuses in it.

use luo_abi::file::{FileKind, FileRef};
use luo_abi::kho::KhoExt;
use luo_abi::registry::Registry;
use luo_abi::{Errno, Phys, PhysAddr};
use luo_core::{BootOptions, Kernel, KernelVersion};
use luo_generated::hugetlb::hugemfd_folio_ser;
use luo_generated::hugetlb::v1::hugemfd_ser;
use luo_handlers::folio_array;
use luo_handlers::guest_memfd::GuestMemfd;
use luo_handlers::hugetlb::{Form, HugeMemfd, Hugetlb, Pool};
use luo_handlers::kvm::Vm;
use luo_handlers::pages::Pages;

/// 2 MiB huge pages, x86's.
const ORDER: u32 = 9;

/// A kernel with the HugeTLB state in `form` registered, and that state.
fn boot(h: Option<luo_core::Handover>, form: Form) -> (Kernel, Hugetlb) {
    let opts = BootOptions {
        version: KernelVersion::Next,
        initcalls: vec![luo_handlers::memfd::initcall::<Kernel>],
        ..BootOptions::default()
    };
    let k = Kernel::boot(&opts, h).unwrap();
    let ht = luo_handlers::vm::register(&k, form).unwrap();
    (k, ht)
}

fn pool(h: &Hugetlb) -> Pool {
    h.state().pools.get(&ORDER).copied().unwrap_or_default()
}

/// A file preserved in [`cross`].
#[derive(Clone, Copy)]
enum Spec {
    /// A HugeTLB memfd of this many huge pages.
    Huge(u64),
    /// A HugeTLB-backed guest_memfd of this many huge pages.
    GmemHuge(u64),
    /// A plain guest_memfd of this many 4 KiB pages, the first written.
    GmemPlain(u64),
}

/// Token of the VM the guest_memfds of [`cross`] belong to.
const VM_TOKEN: u64 = 100;

/// Old kernel: 8 huge pages; `files` preserved in one session "s" (after a VM when there is a
/// guest_memfd), each huge page written with its index. Returns the new kernel.
fn cross(form: Form, files: &[Spec]) -> (Kernel, Hugetlb, Vec<u64>) {
    let (k, ht) = boot(None, form);
    ht.configure(ORDER, 8).unwrap();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    let mut vm = None;
    if files.iter().any(|f| !matches!(f, Spec::Huge(_))) {
        let fd = k
            .open_synthetic(FileKind::KvmVm, "kvm-vm", Box::new(Vm::new(0).unwrap()))
            .unwrap();
        k.preserve_fd(s, fd, VM_TOKEN).unwrap();
        vm = Some(k.file(fd).unwrap() as FileRef);
    }
    let mut toks = Vec::new();
    for (i, spec) in files.iter().enumerate() {
        let (kind, payload): (FileKind, Box<dyn std::any::Any + Send + Sync>) = match *spec {
            Spec::Huge(nr) => {
                let m = HugeMemfd::new(&ht, ORDER, nr).unwrap();
                fill(m.pages());
                (FileKind::HugeMemfd, Box::new(m))
            }
            Spec::GmemHuge(nr) => {
                let g = GuestMemfd::new_hugetlb(&ht, vm.clone().unwrap(), ORDER, nr, 0).unwrap();
                fill(g.pages());
                (FileKind::GuestMemfd, Box::new(g))
            }
            Spec::GmemPlain(n) => {
                let g = GuestMemfd::new(k.host(), vm.clone().unwrap(), n * 4096, 0).unwrap();
                g.pages().write(0, b"plain").unwrap();
                (FileKind::GuestMemfd, Box::new(g))
            }
        };
        let fd = k.open_synthetic(kind, "f", payload).unwrap();
        k.preserve_fd(s, fd, i as u64 + 1).unwrap();
        toks.push(i as u64 + 1);
    }
    let h = k.kexec().unwrap();
    let (k, ht) = boot(Some(h), form);
    (k, ht, toks)
}

/// Writes each folio's index at its start.
fn fill(p: &Pages) {
    for i in 0..p.nr() {
        p.write(i * p.folio_bytes(), &i.to_le_bytes()).unwrap();
    }
}

/// Checks what [`fill`] wrote.
fn check_filled(p: &Pages) {
    assert_eq!(p.folios().len() as u64, p.nr());
    for i in 0..p.nr() {
        let mut b = [0u8; 8];
        p.read(i * p.folio_bytes(), &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), i);
    }
}

const GMEM_PLAIN: Spec = Spec::GmemPlain(4);

#[test]
fn only_a_plain_guest_memfd() {
    // FLB: the HugeTLB FLB is preserved for a file that uses no huge page, and its incoming
    // life is bound to that file: finished only when the guest_memfd's session finishes.
    let (k, ht, toks) = cross(Form::Flb, &[GMEM_PLAIN]);
    let st = ht.state();
    assert_eq!(st.flb_retrieved, 1, "eager get_incoming at huge-memfd init");
    // No preserved huge page: the pool crosses empty; this kernel configures its own.
    assert_eq!(pool(&ht), Pool::default());
    assert_eq!(ht.state().flb_finished, 0, "pinned by the guest_memfd");
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "s").unwrap();
    k.retrieve_fd(s, toks[0]).unwrap();
    k.finish_session(s).unwrap();
    assert_eq!(ht.state().flb_finished, 1);

    // Subsystem: independent of the file; booted at registration, finished with the session.
    let (k, ht, toks) = cross(Form::Subsystem, &[GMEM_PLAIN]);
    let st = ht.state();
    assert_eq!((st.sub_booted, st.flb_retrieved), (1, 0));
    assert_eq!(pool(&ht), Pool::default());
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "s").unwrap();
    k.retrieve_fd(s, toks[0]).unwrap();
    k.finish_session(s).unwrap();
    assert_eq!(ht.state().sub_finished, 1);
}

#[test]
fn no_file_at_all() {
    // FLB: nothing depends on it, so nothing is handed over.
    let (_k, ht, _) = cross(Form::Flb, &[]);
    let st = ht.state();
    assert_eq!((st.flb_retrieved, st.flb_finished), (0, 0));
    assert_eq!(pool(&ht), Pool::default());
    // Subsystem: handed over and booted, with no preserved page in it.
    let (_k, ht, _) = cross(Form::Subsystem, &[]);
    assert_eq!(ht.state().sub_booted, 1);
    assert_eq!(pool(&ht), Pool::default());
    // Either way the new kernel's pool is its own configuration.
    ht.configure(ORDER, 8).unwrap();
    assert_eq!(
        pool(&ht),
        Pool {
            total: 8,
            free: 8,
            held_incoming: 0
        }
    );
}

#[test]
fn huge_memfd_and_hugetlb_guest_memfd_both_forms() {
    for form in [Form::Flb, Form::Subsystem] {
        let (k, ht, toks) = cross(form, &[Spec::Huge(2), Spec::GmemHuge(3)]);
        // Before any retrieve: the 5 preserved pages, held for the files.
        assert_eq!(
            pool(&ht),
            Pool {
                total: 5,
                free: 0,
                held_incoming: 5
            },
            "{form:?}"
        );
        // The new kernel's nr_hugepages counts them: 3 more pages, free.
        assert_eq!(
            ht.configure(ORDER, 4),
            Err(Errno::EINVAL),
            "fewer than held"
        );
        ht.configure(ORDER, 8).unwrap();
        assert_eq!(
            pool(&ht),
            Pool {
                total: 8,
                free: 3,
                held_incoming: 5
            },
            "{form:?}"
        );
        let dev = k.open_dev().unwrap();
        let s = k.retrieve_session(dev, "s").unwrap();
        let fd = k.retrieve_fd(s, toks[0]).unwrap();
        // The memfd's huge pages, with their contents, in place.
        check_filled(
            k.file(fd)
                .unwrap()
                .synthetic::<HugeMemfd>()
                .unwrap()
                .pages(),
        );
        assert_eq!(
            pool(&ht),
            Pool {
                total: 8,
                free: 3,
                held_incoming: 3
            },
            "{form:?}"
        );
        // The guest_memfd is never retrieved: its pages return to the pool at finish.
        k.finish_session(s).unwrap();
        assert_eq!(
            pool(&ht),
            Pool {
                total: 8,
                free: 6,
                held_incoming: 0
            },
            "{form:?}"
        );
        let st = ht.state();
        match form {
            Form::Flb => assert_eq!((st.flb_retrieved, st.flb_finished), (1, 1)),
            Form::Subsystem => assert_eq!((st.sub_booted, st.sub_finished), (1, 1)),
        }
    }
}

/// A HugeTLB memfd of 2 huge pages crosses; `corrupt` changes its handed-over state first.
/// Returns the retrieve's result, after checking that finishing the session works.
fn huge_corrupted(corrupt: impl FnOnce(&Kernel, u64)) -> Result<(), Errno> {
    huge_corrupted_held(corrupt, 0)
}

/// [`huge_corrupted`], with `held` pages left held for the file afterwards.
fn huge_corrupted_held(corrupt: impl FnOnce(&Kernel, u64), held: u64) -> Result<(), Errno> {
    let (k, ht, toks) = cross(Form::Subsystem, &[Spec::Huge(2)]);
    let dev = k.open_dev().unwrap();
    let data = k.luo().incoming()[0].file_data(toks[0]).unwrap();
    corrupt(&k, data);
    let s = k.retrieve_session(dev, "s").unwrap();
    let r = k.retrieve_fd(s, toks[0]).map(drop);
    k.finish_session(s).unwrap();
    k.close(s).unwrap();
    // Retrieved or refused, the file's pages are the file's or free again, none held.
    assert_eq!(pool(&ht).held_incoming, held);
    r
}

fn with_ser(f: impl FnOnce(&mut hugemfd_ser)) -> impl FnOnce(&Kernel, u64) {
    move |k, data| {
        let at = Phys::<hugemfd_ser>::new(PhysAddr::new(data));
        let mut ser = k.kho().read_obj(at).unwrap();
        f(&mut ser);
        k.kho().write_obj(at, &ser).unwrap();
    }
}

#[test]
fn huge_memfd_folio_array_is_validated() {
    assert_eq!(huge_corrupted(|_, _| {}), Ok(()));
    // Size not a multiple of the huge page size, or zero.
    assert_eq!(
        huge_corrupted(with_ser(|s| s.size += 4096)),
        Err(Errno::EINVAL)
    );
    assert_eq!(huge_corrupted(with_ser(|s| s.size = 0)), Err(Errno::EINVAL));
    // An order the folios are not of.
    assert_eq!(
        huge_corrupted(with_ser(|s| s.order = 4)),
        Err(Errno::EINVAL)
    );
    // More records than the array holds: the folios cannot be found, their pages stay held.
    assert_eq!(
        huge_corrupted_held(with_ser(|s| s.nr_folios = 1000), 2),
        Err(Errno::EINVAL)
    );
    // A record with reserved bits set, or an index past the end.
    let record = |f: fn(&mut hugemfd_folio_ser)| {
        move |k: &Kernel, data: u64| {
            let ser: hugemfd_ser = k.kho().read_obj(Phys::new(PhysAddr::new(data))).unwrap();
            let page = folio_array::page_of(&**k.kho(), &{ ser.folios }, 0).unwrap();
            let at = Phys::<hugemfd_folio_ser>::new(page);
            let mut r = k.kho().read_obj(at).unwrap();
            f(&mut r);
            k.kho().write_obj(at, &r).unwrap();
        }
    };
    assert_eq!(
        huge_corrupted(record(|r| r.set_reserved(1))),
        Err(Errno::EINVAL)
    );
    assert_eq!(huge_corrupted(record(|r| r.index = 2)), Err(Errno::EINVAL));
}

/// The pools' handed-over `hugetlb_ser` (posted layout, 37 bytes) in the FLB form: each
/// corruption is refused with `EINVAL` when the new kernel's HugeTLB init fetches it, and
/// nothing is counted into the pools.
#[test]
fn hugetlb_ser_is_validated() {
    use luo_generated::hugetlb::v1::hugetlb_ser;
    assert_eq!(size_of::<hugetlb_ser>(), 37);
    let boot_with = |f: &dyn Fn(&mut hugetlb_ser)| {
        let (k, ht) = boot(None, Form::Flb);
        ht.configure(ORDER, 4).unwrap();
        ht.configure(ORDER + 1, 2).unwrap();
        let dev = k.open_dev().unwrap();
        let s = k.create_session(dev, "s").unwrap();
        let m = HugeMemfd::new(&ht, ORDER, 2).unwrap();
        let fd = k
            .open_synthetic(FileKind::HugeMemfd, "f", Box::new(m))
            .unwrap();
        k.preserve_fd(s, fd, 1).unwrap();
        let at = Phys::<hugetlb_ser>::new(PhysAddr::new(ht.outgoing_data().unwrap()));
        let h = k.kexec().unwrap();
        let opts = BootOptions {
            version: KernelVersion::Next,
            initcalls: vec![luo_handlers::memfd::initcall::<Kernel>],
            ..BootOptions::default()
        };
        // The same physical memory in the new kernel, before HugeTLB's init reads it.
        let k = Kernel::boot(&opts, Some(h)).unwrap();
        let mut ser = k.kho().read_obj(at).unwrap();
        f(&mut ser);
        k.kho().write_obj(at, &ser).unwrap();
        luo_handlers::vm::register(&k, Form::Flb).map(|ht| ht.state().pools)
    };
    let pools = boot_with(&|_| {}).unwrap();
    assert_eq!(
        pools[&ORDER],
        Pool {
            total: 2,
            free: 0,
            held_incoming: 2
        }
    );
    assert_eq!(pools[&(ORDER + 1)], Pool::default());
    type Corrupt<'a> = &'a dyn Fn(&mut hugetlb_ser);
    let cases: [(&str, Corrupt<'_>); 4] = [
        ("nr_hstates past the array", &|s| s.nr_hstates = 5),
        ("order 0", &|s| s.hstates[0].order = 0),
        ("order past 1 GiB pages", &|s| s.hstates[0].order = 19),
        ("one size twice", &|s| s.hstates[1].order = ORDER as u8),
    ];
    for (what, f) in cases {
        assert_eq!(boot_with(f).err(), Some(Errno::EINVAL), "{what}");
    }
}
