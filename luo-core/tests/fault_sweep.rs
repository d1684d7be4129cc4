//! Fault sweep (issue 9): in a mixed scenario (3 sessions × 3 test files,
//! the test FLB linked), every handler and FLB callback site is made to
//! fail for every file in turn. After each injected failure: no panic, the
//! caller gets the injected errno, the rollback is upstream's, every file is
//! either still preserved or cleanly released, and once everything is torn
//! down the preserved-page count is back to its baseline.

use luo_abi::Errno;
use luo_core::testing::{self};
use luo_core::{BootOptions, Kernel};

const SESSIONS: u64 = 3;
const FILES: u64 = 3;

fn values() -> impl Iterator<Item = u64> {
    (0..SESSIONS).flat_map(|s| (0..FILES).map(move |f| 10 * s + f))
}

fn boot() -> Kernel {
    let k = Kernel::boot(&BootOptions::default(), None).expect("boot");
    testing::register(&k, true).expect("register");
    k
}

/// Creates the sessions and preserves every file; returns the session fds.
fn populate(k: &Kernel, dev: i32) -> Vec<i32> {
    (0..SESSIONS)
        .map(|s| {
            let sfd = k.create_session(dev, &format!("s{s}")).expect("create");
            for f in 0..FILES {
                let v = 10 * s + f;
                let fd = k.test_file(v).expect("file");
                k.preserve_fd(sfd, fd, v).expect("preserve");
                k.close(fd).expect("close");
            }
            sfd
        })
        .collect()
}

#[test]
fn preserve_failure_at_every_file() {
    for bad in values() {
        let k = boot();
        let base = k.stats().preserved_beyond_root();
        let dev = k.open_dev().expect("open");
        testing::fail_preserve(Some((bad, Errno::ENOMEM)));
        let mut sessions = Vec::new();
        for s in 0..SESSIONS {
            let sfd = k.create_session(dev, &format!("s{s}")).expect("create");
            for f in 0..FILES {
                let v = 10 * s + f;
                let fd = k.test_file(v).expect("file");
                let r = k.preserve_fd(sfd, fd, v);
                assert_eq!(
                    r,
                    if v == bad { Err(Errno::ENOMEM) } else { Ok(()) },
                    "value {v}"
                );
                k.close(fd).expect("close");
            }
            sessions.push(sfd);
        }
        testing::fail_preserve(None);
        // The failed file is not preserved: its token is free for a retry.
        let retry = k.test_file(bad).expect("file");
        k.preserve_fd(sessions[(bad / 10) as usize], retry, bad)
            .expect("retry succeeds");
        k.close(retry).expect("close");
        for s in sessions {
            k.close(s).expect("close session");
        }
        assert_eq!(
            k.stats().preserved_beyond_root(),
            base,
            "failed preserve at {bad} leaked"
        );
        testing::take_log();
    }
}

#[test]
fn flb_preserve_failure_rolls_the_file_back() {
    let k = boot();
    let base = k.stats().preserved_beyond_root();
    let dev = k.open_dev().expect("open");
    let s = k.create_session(dev, "s").expect("create");
    testing::fail_flb_preserve(Some(Errno::ENOSPC));
    let fd = k.test_file(1).expect("file");
    assert_eq!(k.preserve_fd(s, fd, 1), Err(Errno::ENOSPC));
    testing::fail_flb_preserve(None);
    assert!(
        !testing::take_log().iter().any(|(op, _)| *op == "preserve"),
        "handler preserve ran after a failed FLB preserve"
    );
    k.preserve_fd(s, fd, 1).expect("retry succeeds");
    k.close(fd).expect("close");
    k.close(s).expect("close session");
    assert_eq!(k.stats().preserved_beyond_root(), base);
}

#[test]
fn freeze_failure_at_every_file() {
    for bad in values() {
        let k = boot();
        let dev = k.open_dev().expect("open");
        let sessions = populate(&k, dev);
        let before = k.stats().preserved_beyond_root();
        testing::take_log();
        testing::fail_freeze(Some((bad, Errno::EAGAIN)));
        assert_eq!(k.kexec().err(), Some(Errno::EAGAIN), "freeze of {bad}");
        testing::fail_freeze(None);
        let log = testing::take_log();
        // Every file frozen before the failure is unfrozen again; nothing after it was frozen.
        let frozen: Vec<u64> = log
            .iter()
            .filter(|(op, _)| *op == "freeze")
            .map(|(_, v)| *v)
            .collect();
        let unfrozen: Vec<u64> = log
            .iter()
            .filter(|(op, _)| *op == "unfreeze")
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(frozen.last(), Some(&bad), "{log:?}");
        let mut expect: Vec<u64> = frozen[..frozen.len() - 1].to_vec();
        expect.sort_unstable();
        let mut got = unfrozen.clone();
        got.sort_unstable();
        assert_eq!(
            got, expect,
            "every file frozen before {bad} unfrozen: {log:?}"
        );
        // Every file is still preserved; the retry succeeds and carries all of them.
        assert_eq!(
            k.stats().preserved_beyond_root(),
            before,
            "freeze failure at {bad} changed preserved memory"
        );
        let k2 =
            Kernel::boot(&BootOptions::default(), Some(k.kexec().expect("retry"))).expect("boot 2");
        testing::register(&k2, true).expect("register 2");
        let dev2 = k2.open_dev().expect("open 2");
        for s in 0..SESSIONS {
            let sfd = k2
                .retrieve_session(dev2, &format!("s{s}"))
                .expect("retrieve session");
            for f in 0..FILES {
                let fd = k2.retrieve_fd(sfd, 10 * s + f).expect("retrieve");
                k2.close(fd).expect("close");
            }
            k2.close(sfd).expect("finish");
        }
        let st = k2.stats();
        assert_eq!(
            (st.kho.incoming_pages, st.preserved_beyond_root()),
            (0, 0),
            "{st:?}"
        );
        drop(sessions);
        testing::take_log();
    }
}

#[test]
fn retrieve_failure_and_refused_finish_at_every_file() {
    for bad in values() {
        let k = boot();
        let dev = k.open_dev().expect("open");
        let _sessions = populate(&k, dev);
        let k2 =
            Kernel::boot(&BootOptions::default(), Some(k.kexec().expect("kexec"))).expect("boot 2");
        testing::register(&k2, true).expect("register 2");
        let dev2 = k2.open_dev().expect("open 2");
        testing::fail_retrieve(Some((bad, Errno::EIO)));
        testing::refuse_finish(Some(bad));
        let mut sfds = Vec::new();
        for s in 0..SESSIONS {
            let sfd = k2
                .retrieve_session(dev2, &format!("s{s}"))
                .expect("retrieve session");
            for f in 0..FILES {
                let v = 10 * s + f;
                let r = k2.retrieve_fd(sfd, v);
                if v == bad {
                    assert_eq!(r, Err(Errno::EIO));
                    // The first failure is cached: a later call gives the same error.
                    testing::fail_retrieve(None);
                    assert_eq!(k2.retrieve_fd(sfd, v), Err(Errno::EIO));
                } else {
                    k2.close(r.expect("retrieve")).expect("close");
                }
            }
            sfds.push(sfd);
        }
        // can_finish says no for `bad`: its session's FINISH is EBUSY and nothing finished.
        let owner = (bad / 10) as usize;
        testing::take_log();
        assert_eq!(k2.finish_session(sfds[owner]), Err(Errno::EBUSY));
        assert!(
            !testing::take_log().iter().any(|(op, _)| *op == "finish"),
            "finish ran after a refused can_finish"
        );
        testing::refuse_finish(None);
        for sfd in sfds {
            k2.finish_session(sfd).expect("finish");
            k2.close(sfd).expect("close");
        }
        let st = k2.stats();
        assert_eq!(
            (st.kho.incoming_pages, st.preserved_beyond_root()),
            (0, 0),
            "{st:?} after failing at {bad}"
        );
        testing::take_log();
    }
}
