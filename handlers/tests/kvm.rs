// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! KVM VMs (`kvm_vm_luo_v1`) and guest_memfds (`guest_memfd_luo_v1`) through the core: the
//! guest_memfd names its VM by token and gets it back through the core's dependency API.

use luo_abi::file::{FileKind, FileRef};
use luo_abi::kho::{KhoExt, KhoService};
use luo_abi::registry::Registry;
use luo_abi::{Errno, Phys, PhysAddr};
use luo_core::{BootOptions, Handover, Kernel, KernelVersion};
use luo_generated::kvm::guest_memfd_luo_folio_ser;
use luo_generated::kvm::v1::{guest_memfd_luo_ser, kvm_luo_ser};
use luo_generated::kvm::{GUEST_MEMFD_LUO_FLAG_MMAP, GUEST_MEMFD_LUO_FOLIO_UPTODATE};
use luo_handlers::folio_array;
use luo_handlers::guest_memfd::{GMEM_FILE_NAME, GuestMemfd, gmem_of};
use luo_handlers::hugetlb::{Form, Hugetlb, Pool};
use luo_handlers::kvm::{KVM_X86_SW_PROTECTED_VM, VM_FILE_NAME, Vm, vm_of};
use zerocopy::{FromZeros, IntoBytes};

const PAGE: u64 = 4096;
/// 2 MiB huge pages, x86's.
const ORDER: u32 = 9;
const VM: u64 = 1;
const GMEM: u64 = 2;

/// A kernel with HugeTLB (as a subsystem), KVM and guest_memfd registered, and its HugeTLB.
fn boot(h: Option<Handover>) -> (Kernel, Hugetlb) {
    let opts = BootOptions {
        version: KernelVersion::Next,
        initcalls: vec![luo_handlers::memfd::initcall::<Kernel>],
        ..BootOptions::default()
    };
    let k = Kernel::boot(&opts, h).unwrap();
    let ht = luo_handlers::vm::register(&k, Form::Subsystem).unwrap();
    (k, ht)
}

fn kexec(k: Kernel) -> (Kernel, Hugetlb) {
    let h = k.kexec().unwrap();
    boot(Some(h))
}

fn no_leak(k: &Kernel) {
    let st = k.stats();
    assert_eq!(st.kho.incoming_pages, 0, "{st:?}");
    assert_eq!(st.preserved_beyond_root(), 0, "{st:?}");
}

fn open_vm(k: &Kernel, vm_type: u64) -> i32 {
    k.open_synthetic(
        FileKind::KvmVm,
        VM_FILE_NAME,
        Box::new(Vm::new(vm_type).unwrap()),
    )
    .unwrap()
}

fn vm_ref(k: &Kernel, fd: i32) -> FileRef {
    k.file(fd).unwrap()
}

/// A 64-page guest_memfd of the VM at `vm` with pages 0, 3, 17 and 63 written.
fn open_gmem(k: &Kernel, vm: i32) -> i32 {
    let g = GuestMemfd::new(
        k.host(),
        vm_ref(k, vm),
        64 * PAGE,
        GUEST_MEMFD_LUO_FLAG_MMAP,
    )
    .unwrap();
    for i in [0u64, 3, 17, 63] {
        let data: Vec<u8> = (0..PAGE).map(|b| (b as u8) ^ (i as u8) ^ 0x5a).collect();
        g.pages().write(i * PAGE, &data).unwrap();
    }
    k.open_synthetic(FileKind::GuestMemfd, GMEM_FILE_NAME, Box::new(g))
        .unwrap()
}

fn gmem(k: &Kernel, fd: i32) -> std::sync::Arc<luo_core::file::CoreFile> {
    k.file(fd).unwrap()
}

/// The handed-over `luo_file_ser.data` of `token` in the incoming session `name`.
fn incoming_data(k: &Kernel, name: &str, token: u64) -> u64 {
    k.luo()
        .incoming()
        .iter()
        .find(|s| s.name() == name.as_bytes())
        .and_then(|s| s.file_data(token))
        .unwrap()
}

fn read_gmem_ser(k: &Kernel, data: u64) -> guest_memfd_luo_ser {
    k.kho().read_obj(Phys::new(PhysAddr::new(data))).unwrap()
}

fn write_gmem_ser(k: &Kernel, data: u64, ser: &guest_memfd_luo_ser) {
    k.kho()
        .write_obj(Phys::new(PhysAddr::new(data)), ser)
        .unwrap();
}

#[test]
fn vm_and_guest_memfd_cross_a_kexec() {
    let (k, _ht) = boot(None);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "vm").unwrap();
    let vm = open_vm(&k, KVM_X86_SW_PROTECTED_VM);
    let g = open_gmem(&k, vm);
    let before = gmem_of(&*gmem(&k, g)).unwrap().pages().folios();
    let digest = gmem_of(&*gmem(&k, g)).unwrap().pages().digest().unwrap();
    k.preserve_fd(s, vm, VM).unwrap();
    k.preserve_fd(s, g, GMEM).unwrap();
    let out = k.luo().outgoing()[0].clone();
    // The core recorded the dependency; vm_token is only set at freeze.
    assert_eq!(out.file_deps(GMEM), Some(vec![VM]));
    let ser = read_gmem_ser(&k, out.file_data(GMEM).unwrap());
    assert_eq!({ ser.vm_token }, 0);
    // Preserved: the mapping is frozen, no new folio.
    let gf = gmem(&k, g);
    let pages = gmem_of(&*gf).unwrap().pages();
    assert_eq!(pages.write(5 * PAGE, b"x"), Err(Errno::EPERM));
    drop(out);

    let (k, _ht) = kexec(k);
    let dev = k.open_dev().unwrap();
    let ser = read_gmem_ser(&k, incoming_data(&k, "vm", GMEM));
    assert_eq!(
        (ser.vm_token, ser.nr_folios, ser.size, ser.flags),
        (VM, 4, 64 * PAGE, GUEST_MEMFD_LUO_FLAG_MMAP)
    );
    let s = k.retrieve_session(dev, "vm").unwrap();
    // Only the guest_memfd is asked for: the core retrieves its VM first.
    let g = k.retrieve_fd(s, GMEM).unwrap();
    let gf = gmem(&k, g);
    let gm = gmem_of(&*gf).unwrap();
    let v = vm_of(&**gm.vm()).unwrap();
    assert_eq!(v.vm_type(), KVM_X86_SW_PROTECTED_VM);
    assert!(v.is_restored());
    // RETRIEVE_FD of the VM gives the very VM the guest_memfd got.
    let vm = k.retrieve_fd(s, VM).unwrap();
    let vf: FileRef = k.file(vm).unwrap();
    assert!(std::ptr::addr_eq(
        std::sync::Arc::as_ptr(&vf),
        std::sync::Arc::as_ptr(gm.vm())
    ));
    // Same folios, same places, same contents.
    assert_eq!(gm.pages().folios(), before);
    assert_eq!(gm.pages().digest().unwrap(), digest);
    assert_eq!(gm.flags(), GUEST_MEMFD_LUO_FLAG_MMAP);
    assert!(!gm.pages().is_frozen());
    gm.pages().write(5 * PAGE, b"new page").unwrap();
    let inc = k.luo().incoming()[0].clone();
    assert_eq!(inc.file_deps(GMEM), Some(vec![VM]));
    drop(inc);
    k.finish_session(s).unwrap();
    k.close(s).unwrap();
    no_leak(&k);
}

#[test]
fn dead_or_bugged_vm_is_refused() {
    let (k, _ht) = boot(None);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "vm").unwrap();
    let dead = open_vm(&k, 0);
    vm_of(&*vm_ref(&k, dead)).unwrap().kill();
    assert_eq!(k.preserve_fd(s, dead, 1), Err(Errno::EIO));
    let bugged = open_vm(&k, 0);
    vm_of(&*vm_ref(&k, bugged)).unwrap().bug();
    assert_eq!(k.preserve_fd(s, bugged, 1), Err(Errno::EIO));
    assert_eq!(Vm::new(42).err(), Some(Errno::EINVAL));
    k.close(s).unwrap();
    no_leak(&k);
}

#[test]
fn guest_memfd_without_its_vm_is_enoent() {
    let (k, _ht) = boot(None);
    let dev = k.open_dev().unwrap();
    let a = k.create_session(dev, "a").unwrap();
    let b = k.create_session(dev, "b").unwrap();
    let vm = open_vm(&k, 0);
    let g = open_gmem(&k, vm);
    // The VM is not preserved at all.
    assert_eq!(k.preserve_fd(a, g, GMEM), Err(Errno::ENOENT));
    // It is, in another session.
    k.preserve_fd(b, vm, VM).unwrap();
    assert_eq!(k.preserve_fd(a, g, GMEM), Err(Errno::ENOENT));
    // A failed preserve left nothing behind and the mapping unfrozen.
    let gf = gmem(&k, g);
    let pages = gmem_of(&*gf).unwrap().pages();
    assert!(!pages.is_frozen());
    pages.write(5 * PAGE, b"still mine").unwrap();
    k.close(b).unwrap();
    k.close(a).unwrap();
    no_leak(&k);
    // A private guest_memfd is not preservable at all: no handler takes it.
    let s = k.create_session(dev, "c").unwrap();
    k.preserve_fd(s, vm, VM).unwrap();
    gmem_of(&*gmem(&k, g)).unwrap().make_private();
    assert_eq!(k.preserve_fd(s, g, GMEM), Err(Errno::ENOENT));
    k.close(s).unwrap();
    no_leak(&k);
}

#[test]
fn closing_the_session_unpreserves_guest_memfd_and_vm() {
    let (k, _ht) = boot(None);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "vm").unwrap();
    let vm = open_vm(&k, 0);
    let g = open_gmem(&k, vm);
    let digest = gmem_of(&*gmem(&k, g)).unwrap().pages().digest().unwrap();
    k.preserve_fd(s, vm, VM).unwrap();
    k.preserve_fd(s, g, GMEM).unwrap();
    assert!(k.stats().preserved_beyond_root() > 0);
    k.close(s).unwrap();
    no_leak(&k);
    let gf = gmem(&k, g);
    let pages = gmem_of(&*gf).unwrap().pages();
    assert!(!pages.is_frozen());
    assert_eq!(pages.digest().unwrap(), digest);
    // Both can be preserved again, and cross.
    let s = k.create_session(dev, "vm").unwrap();
    k.preserve_fd(s, vm, VM).unwrap();
    k.preserve_fd(s, g, GMEM).unwrap();
    let (k, _ht) = kexec(k);
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "vm").unwrap();
    let g = k.retrieve_fd(s, GMEM).unwrap();
    assert_eq!(
        gmem_of(&*gmem(&k, g)).unwrap().pages().digest().unwrap(),
        digest
    );
    k.finish_session(s).unwrap();
    k.close(s).unwrap();
    no_leak(&k);
}

#[test]
fn never_retrieved_vm_and_guest_memfd_are_released_at_finish() {
    // Neither retrieved.
    let (k, ht) = boot(None);
    ht.configure(ORDER, 4).unwrap();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "vm").unwrap();
    let vm = open_vm(&k, 0);
    let g = open_gmem(&k, vm);
    let huge = GuestMemfd::new_hugetlb(&ht, vm_ref(&k, vm), ORDER, 3, 0).unwrap();
    let h = k
        .open_synthetic(FileKind::GuestMemfd, GMEM_FILE_NAME, Box::new(huge))
        .unwrap();
    k.preserve_fd(s, vm, VM).unwrap();
    k.preserve_fd(s, g, GMEM).unwrap();
    k.preserve_fd(s, h, 3).unwrap();
    let (k, ht) = kexec(k);
    // The 3 preserved pages crossed; this kernel's nr_hugepages makes the pool 4 again.
    ht.configure(ORDER, 4).unwrap();
    let pool = |h: &Hugetlb| h.state().pools[&ORDER];
    assert_eq!(
        pool(&ht),
        Pool {
            total: 4,
            free: 1,
            held_incoming: 3
        }
    );
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "vm").unwrap();
    k.finish_session(s).unwrap();
    k.close(s).unwrap();
    no_leak(&k);
    // The HugeTLB guest_memfd's pages are back in the pool.
    assert_eq!(
        pool(&ht),
        Pool {
            total: 4,
            free: 4,
            held_incoming: 0
        }
    );

    // Only the VM retrieved: the guest_memfd's folios are discarded at finish.
    let (k, _ht) = boot(None);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "vm").unwrap();
    let vm = open_vm(&k, 0);
    let g = open_gmem(&k, vm);
    k.preserve_fd(s, vm, VM).unwrap();
    k.preserve_fd(s, g, GMEM).unwrap();
    let (k, _ht) = kexec(k);
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "vm").unwrap();
    let vm = k.retrieve_fd(s, VM).unwrap();
    assert_eq!(vm_of(&*vm_ref(&k, vm)).unwrap().vm_type(), 0);
    k.finish_session(s).unwrap();
    k.close(s).unwrap();
    no_leak(&k);
}

#[test]
fn hugetlb_guest_memfd_contents_cross() {
    let (k, ht) = boot(None);
    ht.configure(ORDER, 4).unwrap();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "vm").unwrap();
    let vm = open_vm(&k, 0);
    let huge = GuestMemfd::new_hugetlb(&ht, vm_ref(&k, vm), ORDER, 3, 0).unwrap();
    for i in 0..3u64 {
        let fb = huge.pages().folio_bytes();
        huge.pages()
            .write(i * fb + fb - 8, &(i * 7 + 1).to_le_bytes())
            .unwrap();
    }
    let digest = huge.pages().digest().unwrap();
    let g = k
        .open_synthetic(FileKind::GuestMemfd, GMEM_FILE_NAME, Box::new(huge))
        .unwrap();
    k.preserve_fd(s, vm, VM).unwrap();
    k.preserve_fd(s, g, GMEM).unwrap();
    let (k, ht) = kexec(k);
    ht.configure(ORDER, 4).unwrap();
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "vm").unwrap();
    let g = k.retrieve_fd(s, GMEM).unwrap();
    let gf = gmem(&k, g);
    let gm = gmem_of(&*gf).unwrap();
    assert!(gm.is_hugetlb());
    assert_eq!((gm.pages().order(), gm.pages().nr()), (ORDER, 3));
    assert_eq!(gm.pages().digest().unwrap(), digest);
    assert_eq!(
        ht.state().pools[&ORDER],
        Pool {
            total: 4,
            free: 1,
            held_incoming: 0
        }
    );
    k.finish_session(s).unwrap();
    k.close(s).unwrap();
    no_leak(&k);
}

/// Preserves a VM (token 1), a memfd with data (token 3) and a guest_memfd (token 2), kexecs,
/// lets `corrupt` change the handed-over state, then retrieves the guest_memfd: its error.
/// Finishing the session afterwards must work; `leak_free` says whether every page must be
/// released too.
fn corrupted(corrupt: impl FnOnce(&Kernel, u64), leak_free: bool) -> Errno {
    let (k, _ht) = boot(None);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "vm").unwrap();
    let vm = open_vm(&k, 0);
    let g = open_gmem(&k, vm);
    let m = k.memfd_create("ram").unwrap();
    k.pwrite(m, 0, b"guest ram").unwrap();
    k.preserve_fd(s, vm, VM).unwrap();
    k.preserve_fd(s, m, 3).unwrap();
    k.preserve_fd(s, g, GMEM).unwrap();
    let (k, _ht) = kexec(k);
    let dev = k.open_dev().unwrap();
    corrupt(&k, incoming_data(&k, "vm", GMEM));
    let s = k.retrieve_session(dev, "vm").unwrap();
    let e = k.retrieve_fd(s, GMEM).unwrap_err();
    // The failure is kept: no second attempt.
    assert_eq!(k.retrieve_fd(s, GMEM).unwrap_err(), e);
    // The memfd was not touched.
    let m = k.retrieve_fd(s, 3).unwrap();
    let mut buf = [0u8; 9];
    k.pread(m, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"guest ram");
    k.finish_session(s).unwrap();
    k.close(s).unwrap();
    if leak_free {
        no_leak(&k);
    }
    e
}

fn corrupt_ser(f: impl FnOnce(&mut guest_memfd_luo_ser)) -> impl FnOnce(&Kernel, u64) {
    move |k, data| {
        let mut ser = read_gmem_ser(k, data);
        f(&mut ser);
        write_gmem_ser(k, data, &ser);
    }
}

fn corrupt_record(
    i: usize,
    f: impl FnOnce(&mut guest_memfd_luo_folio_ser),
) -> impl FnOnce(&Kernel, u64) {
    move |k, data| {
        let ser = read_gmem_ser(k, data);
        let page = folio_array::page_of(&**k.kho(), &{ ser.folios }, 0).unwrap();
        let at = PhysAddr::new(page.as_u64() + (i * size_of::<guest_memfd_luo_folio_ser>()) as u64);
        let mut r = guest_memfd_luo_folio_ser::new_zeroed();
        k.kho().read(at, r.as_mut_bytes()).unwrap();
        f(&mut r);
        k.kho().write(at, r.as_bytes()).unwrap();
    }
}

#[test]
fn vm_token_naming_a_non_vm_file_or_nothing_is_refused() {
    // The memfd's token: the core refuses a file of a handler guest_memfd does not declare.
    assert_eq!(
        corrupted(corrupt_ser(|s| s.vm_token = 3), true),
        Errno::EINVAL
    );
    // A token the session does not have.
    assert_eq!(
        corrupted(corrupt_ser(|s| s.vm_token = 999), true),
        Errno::ENOENT
    );
    // Its own token: a cycle, refused by the core (guest_memfd does not declare itself
    // either, which the core checks first).
    assert_eq!(
        corrupted(corrupt_ser(|s| s.vm_token = GMEM), true),
        Errno::EINVAL
    );
}

#[test]
fn corrupt_guest_memfd_state_is_a_typed_error() {
    assert_eq!(
        corrupted(corrupt_ser(|s| s.flags |= 1 << 7), true),
        Errno::EINVAL
    );
    assert_eq!(corrupted(corrupt_ser(|s| s.size = 0), true), Errno::EINVAL);
    assert_eq!(
        corrupted(corrupt_ser(|s| s.size = 4097), true),
        Errno::EINVAL
    );
    // More folios than pages in the file.
    assert_eq!(
        corrupted(corrupt_ser(|s| s.size = 2 * PAGE), true),
        Errno::EINVAL
    );
    // More folios than the array holds: the array is released, its folios cannot be found.
    assert_eq!(
        corrupted(corrupt_ser(|s| s.nr_folios = 300), false),
        Errno::EINVAL
    );
    // Folio records.
    assert_eq!(
        corrupted(
            corrupt_record(1, |r| r.set_flags(GUEST_MEMFD_LUO_FOLIO_UPTODATE | 4)),
            true
        ),
        Errno::EINVAL
    );
    assert_eq!(
        corrupted(corrupt_record(2, |r| r.index = 64), true),
        Errno::EINVAL
    );
    assert_eq!(
        corrupted(corrupt_record(2, |r| r.index = 0), true),
        Errno::EINVAL
    );
    // A pfn that is not a preserved folio: the claimed ones are freed, the rest discarded.
    assert_eq!(
        corrupted(corrupt_record(3, |r| r.set_pfn(1)), false),
        Errno::EINVAL
    );
}

#[test]
fn unknown_vm_type_fails_the_vm_and_its_guest_memfd() {
    let e = corrupted(
        |k, _| {
            let data = incoming_data(k, "vm", VM);
            k.kho()
                .write_obj(
                    Phys::<kvm_luo_ser>::new(PhysAddr::new(data)),
                    &kvm_luo_ser { vm_type: 99 },
                )
                .unwrap();
        },
        true,
    );
    assert_eq!(e, Errno::EINVAL);
}
