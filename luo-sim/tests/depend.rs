// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! File-to-file dependencies as a framework feature (`luo_core::depend`): a dependent test
//! file (`luo-test-dep-v1`) names the files it depends on by token through the core, and gets
//! them back through the core after the kexec.

use std::ffi::c_int;
use std::sync::Arc;

use luo_abi::Errno;
use luo_core::{DependsOn, Kernel, StaticHandler, StaticOps};
use luo_generated::liveupdate::{
    file as CFile, liveupdate_file_handler, liveupdate_file_op_args, liveupdate_file_ops,
    liveupdate_session,
};
use luo_testing as testing;

fn boot() -> Kernel {
    let k = Kernel::boot(&luo_sim::machine::default_options(), None).unwrap();
    testing::register(&k, false).unwrap();
    testing::register_dep(&k).unwrap();
    k
}

fn kexec(k: Kernel) -> Kernel {
    let k2 = k.kexec_into(&luo_sim::machine::default_options()).unwrap();
    testing::register(&k2, false).unwrap();
    testing::register_dep(&k2).unwrap();
    k2
}

fn no_leak(k: &Kernel) {
    let st = k.stats();
    assert_eq!(st.kho.incoming_pages, 0, "{st:?}");
    assert_eq!(st.preserved_beyond_root(), 0, "{st:?}");
}

fn ops_of(log: &[testing::Call], names: &[&str]) -> Vec<testing::Call> {
    log.iter()
        .copied()
        .filter(|(op, _)| names.contains(op))
        .collect()
}

#[test]
fn dependency_is_named_by_token_and_retrieved_first() {
    let k = boot();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "vm").unwrap();
    let t = k.test_file(1).unwrap();
    let d = testing::dep_file(&k, 2, &[t]).unwrap();
    k.preserve_fd(s, t, 10).unwrap();
    k.preserve_fd(s, d, 20).unwrap();
    let out = &k.luo().outgoing()[0];
    assert_eq!(out.file_deps(20), Some(vec![10]));
    assert_eq!(out.file_deps(10), Some(vec![]));

    let k2 = kexec(k);
    testing::take_log();
    let dev = k2.open_dev().unwrap();
    let s = k2.retrieve_session(dev, "vm").unwrap();
    // Retrieving the dependent retrieves its dependency first, through the core.
    let d = k2.retrieve_fd(s, 20).unwrap();
    assert_eq!(
        ops_of(&testing::take_log(), &["retrieve", "dep_retrieve"]),
        vec![("dep_retrieve", 2), ("retrieve", 1)]
    );
    let (v, deps) = testing::dep_of(&k2, d).unwrap();
    assert_eq!(v, 2);
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0].test_value(), Some(1));
    // RETRIEVE_FD of the dependency returns the very file the dependent got, once retrieved.
    let t = k2.retrieve_fd(s, 10).unwrap();
    assert!(Arc::ptr_eq(&k2.file(t).unwrap(), &deps[0]));
    assert!(testing::take_log().is_empty());
    let inc = &k2.luo().incoming()[0];
    assert_eq!(inc.file_deps(20), Some(vec![10]));
    k2.finish_session(s).unwrap();
    assert_eq!(
        ops_of(&testing::take_log(), &["finish", "dep_finish"]),
        vec![("dep_finish", 2), ("finish", 1)]
    );
    k2.close(s).unwrap();
    no_leak(&k2);
}

#[test]
fn dependency_not_preserved_in_the_session_is_enoent() {
    let k = boot();
    let dev = k.open_dev().unwrap();
    let a = k.create_session(dev, "a").unwrap();
    let b = k.create_session(dev, "b").unwrap();
    let t = k.test_file(1).unwrap();
    let d = testing::dep_file(&k, 2, &[t]).unwrap();
    // Not preserved anywhere.
    assert_eq!(k.preserve_fd(b, d, 20), Err(Errno::ENOENT));
    // Preserved, but in another session.
    k.preserve_fd(a, t, 10).unwrap();
    assert_eq!(k.preserve_fd(b, d, 20), Err(Errno::ENOENT));
    assert!(k.luo().outgoing()[1].tokens().is_empty());
    // In the same session it works.
    k.preserve_fd(a, d, 20).unwrap();
    k.close(b).unwrap();
    k.close(a).unwrap();
    no_leak(&k);
}

#[test]
fn dependency_on_an_undeclared_handler_is_einval() {
    let k = boot();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    let m = k.memfd_create("ram").unwrap();
    k.preserve_fd(s, m, 1).unwrap();
    // The dependent handler declares luo-test-v1 and itself, not memfd.
    let d = testing::dep_file(&k, 2, &[m]).unwrap();
    assert_eq!(k.preserve_fd(s, d, 2), Err(Errno::EINVAL));
    k.close(s).unwrap();
    no_leak(&k);
}

#[test]
fn freeze_of_a_dependent_without_its_dependency_fails_and_rolls_back() {
    let k = boot();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    let t = k.test_file(1).unwrap();
    let d = testing::dep_file(&k, 2, &[]).unwrap();
    k.preserve_fd(s, d, 20).unwrap();
    // At freeze it names a file that is not in the session.
    testing::set_deps(&k, d, &[t], &[]).unwrap();
    assert_eq!(k.kexec().err(), Some(Errno::ENOENT));
    // The kernel carries on; preserving the dependency makes the next reboot work.
    k.preserve_fd(s, t, 10).unwrap();
    let k2 = kexec(k);
    let dev = k2.open_dev().unwrap();
    let s = k2.retrieve_session(dev, "s").unwrap();
    let d = k2.retrieve_fd(s, 20).unwrap();
    assert_eq!(testing::dep_of(&k2, d).unwrap().1[0].test_value(), Some(1));
    k2.finish_session(s).unwrap();
    k2.close(s).unwrap();
    no_leak(&k2);
}

#[test]
fn closing_a_session_unpreserves_dependents_first() {
    let k = boot();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    let t = k.test_file(1).unwrap();
    let d = testing::dep_file(&k, 2, &[]).unwrap();
    // The dependent is preserved first and names its dependency only at freeze.
    k.preserve_fd(s, d, 20).unwrap();
    k.preserve_fd(s, t, 10).unwrap();
    testing::set_deps(&k, d, &[t], &[]).unwrap();
    // A failing freeze of the dependency (after the dependent's) rolls the reboot back.
    testing::fail_freeze(Some((1, Errno::EIO)));
    assert_eq!(k.kexec().err(), Some(Errno::EIO));
    testing::fail_freeze(None);
    assert_eq!(k.luo().outgoing()[0].file_deps(20), Some(vec![10]));
    testing::take_log();
    k.close(s).unwrap();
    // Last-to-first alone would unpreserve the dependency (token 10) first.
    assert_eq!(
        ops_of(&testing::take_log(), &["unpreserve", "dep_unpreserve"]),
        vec![("dep_unpreserve", 2), ("unpreserve", 1)]
    );
    no_leak(&k);
}

#[test]
fn never_retrieved_dependents_finish_first() {
    let k = boot();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    let t = k.test_file(1).unwrap();
    let d = testing::dep_file(&k, 2, &[]).unwrap();
    k.preserve_fd(s, d, 20).unwrap();
    k.preserve_fd(s, t, 10).unwrap();
    testing::set_deps(&k, d, &[t], &[]).unwrap();
    let k2 = kexec(k);
    testing::take_log();
    let dev = k2.open_dev().unwrap();
    let s = k2.retrieve_session(dev, "s").unwrap();
    k2.finish_session(s).unwrap();
    assert_eq!(
        ops_of(&testing::take_log(), &["finish", "dep_finish"]),
        vec![("dep_finish", 2), ("finish", 1)]
    );
    k2.close(s).unwrap();
    no_leak(&k2);
}

#[test]
fn unknown_token_is_enoent_at_retrieve() {
    let k = boot();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    let d = testing::dep_file(&k, 2, &[]).unwrap();
    testing::set_deps(&k, d, &[], &[999]).unwrap();
    k.preserve_fd(s, d, 20).unwrap();
    let k2 = kexec(k);
    let dev = k2.open_dev().unwrap();
    let s = k2.retrieve_session(dev, "s").unwrap();
    assert_eq!(k2.retrieve_fd(s, 20), Err(Errno::ENOENT));
    // The failure is the file's: a second RETRIEVE_FD reports it without calling retrieve.
    testing::take_log();
    assert_eq!(k2.retrieve_fd(s, 20), Err(Errno::ENOENT));
    assert!(testing::take_log().is_empty());
    k2.finish_session(s).unwrap();
    k2.close(s).unwrap();
    no_leak(&k2);
}

#[test]
fn token_of_an_undeclared_handler_is_einval_at_retrieve() {
    let k = boot();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    let m = k.memfd_create("ram").unwrap();
    k.pwrite(m, 0, b"guest").unwrap();
    k.preserve_fd(s, m, 30).unwrap();
    let d = testing::dep_file(&k, 2, &[]).unwrap();
    // A raw token naming the memfd, which the dependent handler does not declare.
    testing::set_deps(&k, d, &[], &[30]).unwrap();
    k.preserve_fd(s, d, 20).unwrap();
    let k2 = kexec(k);
    let dev = k2.open_dev().unwrap();
    let s = k2.retrieve_session(dev, "s").unwrap();
    assert_eq!(k2.retrieve_fd(s, 20), Err(Errno::EINVAL));
    // The memfd was not retrieved on the dependent's behalf; it still can be.
    let m = k2.retrieve_fd(s, 30).unwrap();
    let mut buf = [0u8; 5];
    k2.pread(m, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"guest");
    k2.finish_session(s).unwrap();
    k2.close(s).unwrap();
    no_leak(&k2);
}

#[test]
fn retrieve_cycle_is_edeadlk_not_a_hang() {
    let k = boot();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    let a = testing::dep_file(&k, 1, &[]).unwrap();
    let b = testing::dep_file(&k, 2, &[a]).unwrap();
    let c = testing::dep_file(&k, 3, &[]).unwrap();
    k.preserve_fd(s, a, 1).unwrap();
    k.preserve_fd(s, b, 2).unwrap();
    k.preserve_fd(s, c, 3).unwrap();
    // a -> b -> a, and c -> c.
    testing::set_deps(&k, a, &[b], &[]).unwrap();
    testing::set_deps(&k, c, &[], &[3]).unwrap();
    let k2 = kexec(k);
    testing::take_log();
    let dev = k2.open_dev().unwrap();
    let s = k2.retrieve_session(dev, "s").unwrap();
    assert_eq!(k2.retrieve_fd(s, 1), Err(Errno::EDEADLK));
    assert_eq!(
        ops_of(&testing::take_log(), &["dep_retrieve"]),
        vec![("dep_retrieve", 1), ("dep_retrieve", 2)]
    );
    // Both failed for good.
    assert_eq!(k2.retrieve_fd(s, 2), Err(Errno::EDEADLK));
    assert_eq!(k2.retrieve_fd(s, 3), Err(Errno::EDEADLK));
    k2.finish_session(s).unwrap();
    k2.close(s).unwrap();
    no_leak(&k2);
}

#[test]
fn a_failed_lookup_fails_the_callback_even_if_the_handler_ignores_it() {
    testing::ignore_dep_errors(true);
    let k = boot();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    let t = k.test_file(1).unwrap();
    let d = testing::dep_file(&k, 2, &[t]).unwrap();
    // Preserve: the handler skips the missing dependency and says yes; the core says ENOENT
    // and undoes the preserve (the handler's unpreserve frees its page).
    let pages = k.stats().kho.preserved_pages;
    testing::take_log();
    assert_eq!(k.preserve_fd(s, d, 20), Err(Errno::ENOENT));
    assert_eq!(
        ops_of(&testing::take_log(), &["dep_preserve", "dep_unpreserve"]),
        vec![("dep_preserve", 2), ("dep_unpreserve", 2)]
    );
    assert!(k.luo().outgoing()[0].tokens().is_empty());
    assert_eq!(k.stats().kho.preserved_pages, pages);
    // Freeze: likewise, and the reboot is rolled back.
    testing::set_deps(&k, d, &[], &[]).unwrap();
    k.preserve_fd(s, d, 20).unwrap();
    testing::set_deps(&k, d, &[t], &[]).unwrap();
    assert_eq!(k.kexec().err(), Some(Errno::ENOENT));
    // Retrieve: an unknown token the handler skips.
    testing::set_deps(&k, d, &[], &[999]).unwrap();
    let k2 = kexec(k);
    let dev = k2.open_dev().unwrap();
    let s = k2.retrieve_session(dev, "s").unwrap();
    assert_eq!(k2.retrieve_fd(s, 20), Err(Errno::ENOENT));
    assert_eq!(k2.retrieve_fd(s, 20), Err(Errno::ENOENT));
    testing::ignore_dep_errors(false);
    k2.finish_session(s).unwrap();
    k2.close(s).unwrap();
    no_leak(&k2);
}

#[test]
fn concurrent_retrieves_of_dependent_and_dependency_share_one_file() {
    const N: u64 = 8;
    let k = boot();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    for i in 0..N {
        let t = k.test_file(100 + i).unwrap();
        let d = testing::dep_file(&k, 200 + i, &[t]).unwrap();
        k.preserve_fd(s, t, 100 + i).unwrap();
        k.preserve_fd(s, d, 200 + i).unwrap();
    }
    let k2 = kexec(k);
    let dev = k2.open_dev().unwrap();
    let s = k2.retrieve_session(dev, "s").unwrap();
    std::thread::scope(|sc| {
        let deps = sc.spawn(|| {
            (0..N)
                .map(|i| k2.retrieve_fd(s, 200 + i).unwrap())
                .collect::<Vec<_>>()
        });
        let bases = sc.spawn(|| {
            (0..N)
                .map(|i| k2.retrieve_fd(s, 100 + i).unwrap())
                .collect::<Vec<_>>()
        });
        let (deps, bases) = (deps.join().unwrap(), bases.join().unwrap());
        for i in 0..N as usize {
            let (v, d) = testing::dep_of(&k2, deps[i]).unwrap();
            assert_eq!(v, 200 + i as u64);
            assert!(Arc::ptr_eq(&d[0], &k2.file(bases[i]).unwrap()));
        }
    });
    k2.finish_session(s).unwrap();
    k2.close(s).unwrap();
    no_leak(&k2);
}

#[test]
fn lookups_outside_a_callback_of_the_session_are_einval() {
    let k = boot();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    let t = k.test_file(1).unwrap();
    k.preserve_fd(s, t, 10).unwrap();
    let session = k.luo().outgoing()[0].clone();
    let file = k.file(t).unwrap();
    let sp: *const liveupdate_session = Arc::as_ptr(&session).cast();
    let fp: *const CFile = Arc::as_ptr(&file).cast();
    assert_eq!(k.luo().get_token_outgoing(sp, fp), Err(Errno::EINVAL));
    assert_eq!(k.luo().get_file_incoming(sp, 10).err(), Some(Errno::EINVAL));
    // The C API: the same, and EOPNOTSUPP without a current kernel.
    let mut tok = 0u64;
    {
        let _g = k.enter();
        // SAFETY: `tok` is a valid out-pointer; the other pointers are only compared.
        let r = unsafe {
            luo_core::capi::liveupdate_get_token_outgoing(sp.cast_mut(), fp.cast_mut(), &mut tok)
        };
        assert_eq!(r, Errno::EINVAL.to_neg());
    }
    // SAFETY: as above.
    let r = unsafe {
        luo_core::capi::liveupdate_get_token_outgoing(sp.cast_mut(), fp.cast_mut(), &mut tok)
    };
    assert_eq!(r, Errno::EOPNOTSUPP.to_neg());
    k.close(s).unwrap();
}

// ---- registration of depends_on ----------------------------------------------------------

unsafe extern "C" fn no_preserve(_h: *mut liveupdate_file_handler, _f: *mut CFile) -> bool {
    false
}
unsafe extern "C" fn op(_a: *mut liveupdate_file_op_args) -> c_int {
    0
}
unsafe extern "C" fn op_void(_a: *mut liveupdate_file_op_args) {}

static OPS: StaticOps = StaticOps(liveupdate_file_ops {
    can_preserve: Some(no_preserve),
    preserve: Some(op),
    unpreserve: Some(op_void),
    freeze: None,
    unfreeze: None,
    retrieve: Some(op),
    can_finish: None,
    finish: Some(op_void),
    get_id: None,
    owner: std::ptr::null_mut(),
});

static EMPTY: DependsOn = DependsOn(&[c"".as_ptr().cast(), std::ptr::null()]);
static LONG: DependsOn = DependsOn(&[
    c"a-compatible-string-that-is-far-too-long-for-a-handler-v1"
        .as_ptr()
        .cast(),
    std::ptr::null(),
]);
static NINE: DependsOn = DependsOn(&[
    c"d1".as_ptr().cast(),
    c"d2".as_ptr().cast(),
    c"d3".as_ptr().cast(),
    c"d4".as_ptr().cast(),
    c"d5".as_ptr().cast(),
    c"d6".as_ptr().cast(),
    c"d7".as_ptr().cast(),
    c"d8".as_ptr().cast(),
    c"d9".as_ptr().cast(),
    std::ptr::null(),
]);
static EIGHT: DependsOn = DependsOn(&[
    c"d1".as_ptr().cast(),
    c"d2".as_ptr().cast(),
    c"d3".as_ptr().cast(),
    c"d4".as_ptr().cast(),
    c"d5".as_ptr().cast(),
    c"d6".as_ptr().cast(),
    c"d7".as_ptr().cast(),
    c"d8".as_ptr().cast(),
    std::ptr::null(),
]);
static H_EMPTY: StaticHandler = StaticHandler::with_deps(&OPS, "dep-empty-v1", &EMPTY);
static H_LONG: StaticHandler = StaticHandler::with_deps(&OPS, "dep-long-v1", &LONG);
static H_NINE: StaticHandler = StaticHandler::with_deps(&OPS, "dep-nine-v1", &NINE);
static H_EIGHT: StaticHandler = StaticHandler::with_deps(&OPS, "dep-eight-v1", &EIGHT);

#[test]
fn depends_on_is_validated_at_registration() {
    let k = Kernel::boot(&luo_sim::machine::default_options(), None).unwrap();
    assert_eq!(k.register_file_handler(&H_EMPTY), Err(Errno::EINVAL));
    assert_eq!(k.register_file_handler(&H_LONG), Err(Errno::EINVAL));
    assert_eq!(k.register_file_handler(&H_NINE), Err(Errno::EINVAL));
    k.register_file_handler(&H_EIGHT).unwrap();
    testing::register_dep(&k).unwrap();
    assert!(k.luo().handlers().contains(&"dep-eight-v1".to_owned()));
    assert!(!k.luo().handlers().contains(&"dep-nine-v1".to_owned()));
}
