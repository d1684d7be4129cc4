//! HugeTLB both ways, side by side: what the FLB form (upstream's RFC) and the subsystem form
//! (the seed) do to the HugeTLB pools when only a non-HugeTLB guest_memfd is preserved, when
//! no file is preserved, and with a HugeTLB memfd that is retrieved and one that is not.

use luo_abi::file::FileKind;
use luo_core::{BootOptions, Kernel, KernelVersion};
use luo_handlers::hugetlb::{self, Backing, Form, Pool};

const ORDER: u32 = 9;

fn boot(h: Option<luo_core::Handover>, form: Form) -> Kernel {
    let opts = BootOptions {
        version: KernelVersion::Next,
        ..BootOptions::default()
    };
    let k = Kernel::boot(&opts, h).unwrap();
    k.make_current();
    hugetlb::register(form).unwrap();
    k
}

fn pool(k: &Kernel) -> Pool {
    k.make_current();
    hugetlb::state()
        .unwrap()
        .pools
        .get(&ORDER)
        .copied()
        .unwrap_or_default()
}

/// Old kernel: 8 huge pages; `files` preserved in one session "s". Returns the new kernel.
fn cross(form: Form, files: &[(FileKind, Backing)]) -> (Kernel, Vec<u64>) {
    let k = boot(None, form);
    hugetlb::configure(ORDER, 8).unwrap();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    let mut toks = Vec::new();
    for (i, (kind, b)) in files.iter().enumerate() {
        let b = if b.hugetlb {
            hugetlb::alloc(b.order, b.nr).unwrap()
        } else {
            *b
        };
        let fd = k.open_synthetic(*kind, "f", Box::new(b)).unwrap();
        k.preserve_fd(s, fd, i as u64 + 1).unwrap();
        toks.push(i as u64 + 1);
    }
    let h = k.kexec().unwrap();
    (boot(Some(h), form), toks)
}

const GMEM_PLAIN: (FileKind, Backing) = (
    FileKind::GuestMemfd,
    Backing {
        hugetlb: false,
        order: 0,
        nr: 4,
    },
);

#[test]
fn only_a_plain_guest_memfd() {
    // FLB: the HugeTLB FLB is preserved for a file that uses no huge page, and its incoming
    // life is bound to that file: finished only when the guest_memfd's session finishes.
    let (k, toks) = cross(Form::Flb, &[GMEM_PLAIN]);
    let st = hugetlb::state().unwrap();
    assert_eq!(st.flb_retrieved, 1, "eager get_incoming at huge-memfd init");
    assert_eq!(
        pool(&k),
        Pool {
            total: 8,
            free: 8,
            held_incoming: 0
        }
    );
    assert_eq!(
        hugetlb::state().unwrap().flb_finished,
        0,
        "pinned by the guest_memfd"
    );
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "s").unwrap();
    k.retrieve_fd(s, toks[0]).unwrap();
    k.finish_session(s).unwrap();
    k.make_current();
    assert_eq!(hugetlb::state().unwrap().flb_finished, 1);

    // Subsystem: independent of the file; booted at registration, finished with the session.
    let (k, toks) = cross(Form::Subsystem, &[GMEM_PLAIN]);
    let st = hugetlb::state().unwrap();
    assert_eq!((st.sub_booted, st.flb_retrieved), (1, 0));
    assert_eq!(
        pool(&k),
        Pool {
            total: 8,
            free: 8,
            held_incoming: 0
        }
    );
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "s").unwrap();
    k.retrieve_fd(s, toks[0]).unwrap();
    k.finish_session(s).unwrap();
    k.make_current();
    assert_eq!(hugetlb::state().unwrap().sub_finished, 1);
}

#[test]
fn no_file_at_all() {
    // FLB: nothing depends on it, so nothing is handed over: the pool is gone.
    let (k, _) = cross(Form::Flb, &[]);
    let st = hugetlb::state().unwrap();
    assert_eq!((st.flb_retrieved, st.flb_finished), (0, 0));
    assert_eq!(pool(&k), Pool::default(), "FLB form loses the pool");
    // Subsystem: the pool comes back, every page free.
    let (k, _) = cross(Form::Subsystem, &[]);
    assert_eq!(hugetlb::state().unwrap().sub_booted, 1);
    assert_eq!(
        pool(&k),
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
        let huge = Backing {
            hugetlb: true,
            order: ORDER,
            nr: 2,
        };
        let (k, toks) = cross(
            form,
            &[
                (FileKind::HugeMemfd, huge),
                (FileKind::GuestMemfd, Backing { nr: 3, ..huge }),
            ],
        );
        // Before any retrieve: 5 pages held for the files, 3 free.
        assert_eq!(
            pool(&k),
            Pool {
                total: 8,
                free: 3,
                held_incoming: 5
            },
            "{form:?}"
        );
        let dev = k.open_dev().unwrap();
        let s = k.retrieve_session(dev, "s").unwrap();
        k.retrieve_fd(s, toks[0]).unwrap();
        assert_eq!(
            pool(&k),
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
            pool(&k),
            Pool {
                total: 8,
                free: 6,
                held_incoming: 0
            },
            "{form:?}"
        );
        k.make_current();
        let st = hugetlb::state().unwrap();
        match form {
            Form::Flb => assert_eq!((st.flb_retrieved, st.flb_finished), (1, 1)),
            Form::Subsystem => assert_eq!((st.sub_booted, st.sub_finished), (1, 1)),
        }
    }
}
