//! Model-based test (issue 9): random sequences of uAPI operations against
//! a small reference model of upstream's semantics (§1). Every return value
//! and errno must match the model; then an in-process kexec, after which
//! retrieval returns exactly what the model says is preserved, and a second
//! retrieve of a session is EINVAL, an unknown name ENOENT.
//!
//! 300 seeded sequences of 150 operations (a deterministic generator, so a
//! failure names its seed and reproduces).

use std::collections::BTreeMap;

use luo_abi::Errno;
use luo_core::testing;
use luo_core::{BootOptions, Kernel};

struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The reference model: outgoing sessions by name, each with its tokens.
#[derive(Default)]
struct Model {
    sessions: BTreeMap<String, BTreeMap<u64, u64>>,
}

fn run(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let k = Kernel::boot(&BootOptions::default(), None).expect("boot");
    testing::register(&k, false).expect("register");
    let dev = k.open_dev().expect("open");
    let mut model = Model::default();
    // Real session fds by name (the model's outgoing sessions).
    let mut fds: BTreeMap<String, i32> = BTreeMap::new();
    for step in 0..150u64 {
        let ctx = format!("seed {seed}, step {step}");
        let name = format!("s{}", rng.next(6));
        match rng.next(8) {
            0 | 1 => {
                let got = k.create_session(dev, &name);
                match model.sessions.entry(name.clone()) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        assert_eq!(got, Err(Errno::EEXIST), "{ctx}: duplicate name");
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        fds.insert(name, got.unwrap_or_else(|e| panic!("{ctx}: create: {e}")));
                        v.insert(BTreeMap::new());
                    }
                }
            }
            2..=4 => {
                let Some(&s) = fds.get(&name) else { continue };
                let token = rng.next(5);
                let value = seed << 32 | step;
                let f = k.test_file(value).expect("file");
                let got = k.preserve_fd(s, f, token);
                let tokens = model.sessions.get_mut(&name).expect("modelled");
                match tokens.entry(token) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        assert_eq!(got, Err(Errno::EEXIST), "{ctx}: token reuse");
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        assert_eq!(got, Ok(()), "{ctx}: preserve");
                        v.insert(value);
                    }
                }
                k.close(f).expect("close file");
            }
            5 => {
                let Some(&s) = fds.get(&name) else { continue };
                // Something no handler accepts.
                let null = k.open_null().expect("null");
                assert_eq!(
                    k.preserve_fd(s, null, 99),
                    Err(Errno::ENOENT),
                    "{ctx}: /dev/null"
                );
                k.close(null).expect("close");
            }
            6 => {
                // The same file preserved twice (any session): EBUSY.
                let Some(&s) = fds.get(&name) else { continue };
                let f = k.test_file(7).expect("file");
                let token = 100 + step;
                assert_eq!(k.preserve_fd(s, f, token), Ok(()), "{ctx}");
                assert_eq!(
                    k.preserve_fd(s, f, token + 1000),
                    Err(Errno::EBUSY),
                    "{ctx}: double preservation"
                );
                model
                    .sessions
                    .get_mut(&name)
                    .expect("modelled")
                    .insert(token, 7);
                k.close(f).expect("close");
            }
            _ => {
                // Closing an outgoing session unpreserves everything in it.
                if let Some(s) = fds.remove(&name) {
                    k.close(s).expect("close session");
                    model.sessions.remove(&name);
                }
            }
        }
    }
    let k2 =
        Kernel::boot(&BootOptions::default(), Some(k.kexec().expect("kexec"))).expect("boot 2");
    testing::register(&k2, false).expect("register 2");
    let dev2 = k2.open_dev().expect("open 2");
    for (name, tokens) in &model.sessions {
        let s = k2
            .retrieve_session(dev2, name)
            .unwrap_or_else(|e| panic!("seed {seed}: retrieve {name}: {e}"));
        assert_eq!(
            k2.retrieve_session(dev2, name),
            Err(Errno::EINVAL),
            "seed {seed}: retrieved twice"
        );
        for (&token, &value) in tokens {
            let fd = k2
                .retrieve_fd(s, token)
                .unwrap_or_else(|e| panic!("seed {seed}: {name}/{token}: {e}"));
            assert_eq!(
                k2.file(fd).expect("file").test_value(),
                Some(value),
                "seed {seed}: {name}/{token}"
            );
            k2.close(fd).expect("close");
        }
        assert_eq!(
            k2.retrieve_fd(s, 4242),
            Err(Errno::ENOENT),
            "seed {seed}: unknown token"
        );
        k2.finish_session(s).expect("finish");
        k2.close(s).expect("close");
    }
    for i in 0..6 {
        let name = format!("s{i}");
        if !model.sessions.contains_key(&name) {
            assert_eq!(
                k2.retrieve_session(dev2, &name),
                Err(Errno::ENOENT),
                "seed {seed}: {name} was never kept"
            );
        }
    }
    let st = k2.stats();
    assert_eq!(
        (st.kho.incoming_pages, st.preserved_beyond_root()),
        (0, 0),
        "seed {seed}: {st:?}"
    );
}

/// Sequences run; under Miri (the serialization paths with heap backing) a few.
const SEQUENCES: u64 = if cfg!(miri) { 2 } else { 300 };

#[test]
fn random_uapi_sequences_match_the_model() {
    for seed in 1..=SEQUENCES {
        run(seed);
    }
}
