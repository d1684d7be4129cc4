// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Freeze failure injected at the k-th file of the m-th session (upstream rollback order), and
//! scale: 2,000 sessions and 500 files in one session through a simulated kexec.

use luo_abi::Errno;
use luo_core::Kernel;
use luo_testing as testing;

fn boot() -> Kernel {
    let k = Kernel::boot(&luo_sim::machine::default_options(), None).unwrap();
    testing::register(&k, true).unwrap();
    k
}

/// Sessions s0..s{m}, each with `per` test files of value 100*session + file.
fn populate(k: &Kernel, sessions: u64, per: u64) -> i32 {
    let dev = k.open_dev().unwrap();
    for s in 0..sessions {
        let sfd = k.create_session(dev, &format!("s{s}")).unwrap();
        for f in 0..per {
            let v = 100 * s + f;
            let fd = k.test_file(v).unwrap();
            k.preserve_fd(sfd, fd, v).unwrap();
            k.close(fd).unwrap();
        }
    }
    dev
}

#[test]
fn freeze_failure_rolls_back_in_upstream_order() {
    for (m, kth) in [(0u64, 0u64), (1, 2), (2, 1), (2, 3)] {
        let k = boot();
        populate(&k, 3, 4);
        let before = k.stats();
        let tokens: Vec<Vec<u64>> = k.luo().outgoing().iter().map(|s| s.tokens()).collect();
        testing::fail_freeze(Some((100 * m + kth, Errno::EAGAIN)));
        let mut log = Vec::new();
        assert_eq!(k.kexec_logged(&mut log).err(), Some(Errno::EAGAIN));
        testing::fail_freeze(None);

        // Expected: freeze every file up to the failing one; unfreeze the failing session's
        // earlier files walking forward; then earlier sessions in reverse session order.
        let mut want = Vec::new();
        for s in 0..m {
            for f in 0..4 {
                want.push((format!("s{s}"), 100 * s + f, "freeze"));
            }
        }
        for f in 0..=kth {
            want.push((format!("s{m}"), 100 * m + f, "freeze"));
        }
        for f in 0..kth {
            want.push((format!("s{m}"), 100 * m + f, "unfreeze"));
        }
        for s in (0..m).rev() {
            for f in 0..4 {
                want.push((format!("s{s}"), 100 * s + f, "unfreeze"));
            }
        }
        assert_eq!(log, want, "m={m} k={kth}");
        // The handler saw the same calls.
        let calls: Vec<_> = testing::take_log()
            .into_iter()
            .filter(|(op, _)| *op == "freeze" || *op == "unfreeze")
            .collect();
        let expect: Vec<_> = want.iter().map(|(_, v, op)| (*op, *v)).collect();
        assert_eq!(calls, expect);

        // Every file is still preserved in its outgoing session; nothing leaked.
        let after: Vec<Vec<u64>> = k.luo().outgoing().iter().map(|s| s.tokens()).collect();
        assert_eq!(after, tokens);
        assert_eq!(k.stats(), before);

        // The live update can be retried, and everything crosses.
        let k2 = Kernel::boot(
            &luo_sim::machine::default_options(),
            Some(k.kexec().unwrap()),
        )
        .unwrap();
        testing::register(&k2, true).unwrap();
        let dev = k2.open_dev().unwrap();
        for s in 0..3u64 {
            let sfd = k2.retrieve_session(dev, &format!("s{s}")).unwrap();
            for f in 0..4 {
                let fd = k2.retrieve_fd(sfd, 100 * s + f).unwrap();
                assert_eq!(k2.file(fd).unwrap().test_value(), Some(100 * s + f));
            }
            k2.close(sfd).unwrap();
        }
        let st = k2.stats();
        assert_eq!((st.kho.incoming_pages, st.preserved_beyond_root()), (0, 0));
        testing::take_log();
    }
}

#[test]
fn scale_2000_sessions() {
    let k = boot();
    let dev = k.open_dev().unwrap();
    for s in 0..2000u64 {
        let sfd = k.create_session(dev, &format!("session-{s}")).unwrap();
        let fd = k.test_file(s).unwrap();
        k.preserve_fd(sfd, fd, s).unwrap();
        k.close(fd).unwrap();
    }
    let k2 = Kernel::boot(
        &luo_sim::machine::default_options(),
        Some(k.kexec().unwrap()),
    )
    .unwrap();
    testing::register(&k2, true).unwrap();
    assert_eq!(k2.liveupdate_num(), 1);
    let dev = k2.open_dev().unwrap();
    assert_eq!(k2.stats().incoming_sessions, 2000);
    for s in (0..2000u64).rev() {
        let sfd = k2.retrieve_session(dev, &format!("session-{s}")).unwrap();
        let fd = k2.retrieve_fd(sfd, s).unwrap();
        assert_eq!(k2.file(fd).unwrap().test_value(), Some(s));
        k2.close(sfd).unwrap();
        k2.close(fd).unwrap();
    }
    let st = k2.stats();
    assert_eq!(
        (st.kho.incoming_pages, st.preserved_beyond_root()),
        (0, 0),
        "{st:?}"
    );
    assert_eq!(st.incoming_sessions, 0);
    testing::take_log();
}

#[test]
fn scale_500_memfds_in_one_session() {
    let k = Kernel::boot(&luo_sim::machine::default_options(), None).unwrap();
    let dev = k.open_dev().unwrap();
    let sfd = k.create_session(dev, "big").unwrap();
    let data = |i: u64| -> Vec<u8> {
        (0..(i % 7) * 1000 + 10)
            .map(|j| (i as u8) ^ (j as u8))
            .collect()
    };
    for i in 0..500u64 {
        let m = k.memfd_create("m").unwrap();
        k.pwrite(m, 0, &data(i)).unwrap();
        k.preserve_fd(sfd, m, i).unwrap();
        k.close(m).unwrap();
    }
    let k2 = k.kexec_into(&luo_sim::machine::default_options()).unwrap();
    let dev = k2.open_dev().unwrap();
    let sfd = k2.retrieve_session(dev, "big").unwrap();
    for i in (0..500u64).step_by(3) {
        let fd = k2.retrieve_fd(sfd, i).unwrap();
        let want = data(i);
        let mut got = vec![0u8; want.len() + 1];
        let n = k2.pread(fd, 0, &mut got).unwrap();
        assert_eq!(&got[..n], &want[..], "file {i}");
        k2.close(fd).unwrap();
    }
    // The other two thirds were never retrieved: FINISH discards their pages.
    k2.finish_session(sfd).unwrap();
    k2.close(sfd).unwrap();
    let st = k2.stats();
    assert_eq!(
        (st.kho.incoming_pages, st.preserved_beyond_root()),
        (0, 0),
        "{st:?}"
    );
}
