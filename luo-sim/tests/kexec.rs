// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Simulated kexec in-process: memfds with data, several hops, dropped state, FLBs.

use luo_abi::Errno;
use luo_core::Kernel;
use luo_testing as testing;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn boot() -> Kernel {
    Kernel::boot(&luo_sim::machine::default_options(), None).unwrap()
}

fn read_all(k: &Kernel, fd: i32, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len + 16];
    let n = k.pread(fd, 0, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn memfd_crosses_a_kexec_without_copy() {
    let k = boot();
    assert_eq!(k.liveupdate_num(), 0);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "vm-1").unwrap();
    let m = k.memfd_create("guest-ram").unwrap();
    let data = pattern(3 * 4096 + 100, 7);
    k.pwrite(m, 0, &data).unwrap();
    let base = k.file(m).unwrap().memfd().unwrap().region_base();
    k.preserve_fd(s, m, 42).unwrap();
    k.close(m).unwrap();
    // Frozen: growing fails, writing within the size works.
    let f = k.luo().outgoing()[0].tokens();
    assert_eq!(f, vec![42]);
    let k2 = k.kexec_into(&luo_sim::machine::default_options()).unwrap();
    assert_eq!(k2.liveupdate_num(), 1);
    assert!(k2.stats().kho.incoming_pages > 0);
    let dev = k2.open_dev().unwrap();
    let s = k2.retrieve_session(dev, "vm-1").unwrap();
    let fd = k2.retrieve_fd(s, 42).unwrap();
    assert_eq!(read_all(&k2, fd, data.len()), data);
    // The very same host memfd: same synthetic region.
    assert_eq!(k2.file(fd).unwrap().memfd().unwrap().region_base(), base);
    let again = k2.retrieve_fd(s, 42).unwrap();
    assert_ne!(again, fd);
    k2.finish_session(s).unwrap();
    k2.finish_session(s).unwrap();
    k2.close(s).unwrap();
    let st = k2.stats();
    assert_eq!(st.kho.incoming_pages, 0, "{st:?}");
    assert_eq!(st.preserved_beyond_root(), 0, "{st:?}");
    assert_eq!(st.incoming_sessions, 0);
    // The file outlives the session.
    assert_eq!(read_all(&k2, again, data.len()), data);
}

#[test]
fn several_hops_and_unretrieved_state_is_dropped() {
    let mut k = boot();
    for hop in 0..4u64 {
        assert_eq!(k.liveupdate_num(), hop);
        let dev = k.open_dev().unwrap();
        if hop > 0 {
            // The previous hop's "kept" session crossed; "ignored" of two hops ago did not.
            let s = k.retrieve_session(dev, "kept").unwrap();
            let fd = k.retrieve_fd(s, hop - 1).unwrap();
            assert_eq!(read_all(&k, fd, 5000), pattern(5000, (hop - 1) as u8));
            k.close(s).unwrap();
            if hop > 1 {
                let old = format!("ignored-{}", hop - 2);
                assert_eq!(k.retrieve_session(dev, &old), Err(Errno::ENOENT));
            }
        }
        let s = k.create_session(dev, "kept").unwrap();
        let m = k.memfd_create("m").unwrap();
        k.pwrite(m, 0, &pattern(5000, hop as u8)).unwrap();
        k.preserve_fd(s, m, hop).unwrap();
        // Never retrieved in the next kernel: dropped at the kexec after it.
        let ign = k.create_session(dev, &format!("ignored-{hop}")).unwrap();
        let m2 = k.memfd_create("m2").unwrap();
        k.pwrite(m2, 0, b"unwanted").unwrap();
        k.preserve_fd(ign, m2, 1).unwrap();
        let next = k.kexec_into(&luo_sim::machine::default_options()).unwrap();
        if hop > 0 {
            // Previous "ignored" session state was not carried: only this hop's two files.
            let st = next.stats();
            assert!(st.kho.incoming_pages < 20, "{st:?}");
        }
        k = next;
    }
}

#[test]
fn flb_lifecycle_across_kexec() {
    let k = boot();
    testing::register(&k, true).unwrap();
    let dev = k.open_dev().unwrap();
    let a = k.create_session(dev, "a").unwrap();
    let b = k.create_session(dev, "b").unwrap();
    for (s, v) in [(a, 1), (a, 2), (b, 3)] {
        let f = k.test_file(v).unwrap();
        k.preserve_fd(s, f, v).unwrap();
    }
    assert_eq!(
        testing::take_log(),
        vec![
            ("flb_preserve", 0),
            ("preserve", 1),
            ("preserve", 2),
            ("preserve", 3)
        ]
    );
    // Closing session a drops two files but the FLB stays for b.
    k.close(a).unwrap();
    let log = testing::take_log();
    assert_eq!(log, vec![("unpreserve", 2), ("unpreserve", 1)]);
    let a = k.create_session(dev, "a").unwrap();
    let f = k.test_file(4).unwrap();
    k.preserve_fd(a, f, 4).unwrap();
    testing::take_log();

    let k2 = Kernel::boot(
        &luo_sim::machine::default_options(),
        Some(k.kexec().unwrap()),
    )
    .unwrap();
    testing::register(&k2, true).unwrap();
    let dev = k2.open_dev().unwrap();
    let b = k2.retrieve_session(dev, "b").unwrap();
    let fd = k2.retrieve_fd(b, 3).unwrap();
    assert_eq!(k2.file(fd).unwrap().test_value(), Some(3));
    k2.finish_session(b).unwrap();
    let a = k2.retrieve_session(dev, "a").unwrap();
    k2.close(a).unwrap();
    let log = testing::take_log();
    assert_eq!(log.last(), Some(&("flb_finish", testing::FLB_MAGIC)));
    assert!(log.contains(&("finish", 4)), "{log:?}");
    k2.close(b).unwrap();
    let st = k2.stats();
    assert_eq!(
        (st.kho.incoming_pages, st.preserved_beyond_root()),
        (0, 0),
        "{st:?}"
    );
}

#[test]
fn concurrent_sessions_from_several_threads() {
    let k = boot();
    testing::register(&k, true).unwrap();
    let dev = k.open_dev().unwrap();
    std::thread::scope(|sc| {
        for t in 0..4u64 {
            let k = k.clone();
            sc.spawn(move || {
                let s = k.create_session(dev, &format!("t{t}")).unwrap();
                for i in 0..40u64 {
                    let v = t * 1000 + i;
                    let fd = if i % 2 == 0 {
                        let m = k.memfd_create("m").unwrap();
                        k.pwrite(m, 0, &v.to_ne_bytes()).unwrap();
                        m
                    } else {
                        k.test_file(v).unwrap()
                    };
                    k.preserve_fd(s, fd, v).unwrap();
                    k.close(fd).unwrap();
                }
            });
        }
    });
    let k2 = Kernel::boot(
        &luo_sim::machine::default_options(),
        Some(k.kexec().unwrap()),
    )
    .unwrap();
    testing::register(&k2, true).unwrap();
    let dev = k2.open_dev().unwrap();
    std::thread::scope(|sc| {
        for t in 0..4u64 {
            let k2 = k2.clone();
            sc.spawn(move || {
                let s = k2.retrieve_session(dev, &format!("t{t}")).unwrap();
                for i in 0..40u64 {
                    let v = t * 1000 + i;
                    let fd = k2.retrieve_fd(s, v).unwrap();
                    if i % 2 == 0 {
                        let mut b = [0u8; 8];
                        k2.pread(fd, 0, &mut b).unwrap();
                        assert_eq!(u64::from_ne_bytes(b), v);
                    } else {
                        assert_eq!(k2.file(fd).unwrap().test_value(), Some(v));
                    }
                    k2.close(fd).unwrap();
                }
                k2.close(s).unwrap();
            });
        }
    });
    let st = k2.stats();
    assert_eq!(
        (st.kho.incoming_pages, st.preserved_beyond_root()),
        (0, 0),
        "{st:?}"
    );
    testing::take_log();
}
