// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Model-based test, with proptest: random sequences of uAPI operations, with
//! in-process kexecs at random points, against a small reference model of upstream's
//! semantics (luo_core.c, luo_session.c). Every return value and errno must match the model; at each kexec the
//! new kernel must hand back exactly what the model says is preserved — every session once
//! (a second retrieve is EINVAL, an unknown name ENOENT), every file under its token with
//! its value (an unknown token ENOENT) — and after FINISH nothing may be left preserved or
//! incoming. The sequence then goes on in the new kernel.
//!
//! The seed is fixed, so CI runs the same cases every time; on a failure proptest shrinks the
//! sequence and prints the smallest one that still fails.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use luo_abi::Errno;
use luo_core::{BootOptions, Kernel};
use luo_testing as testing;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError};

/// Session names the sequences draw from (few, so they collide).
const NAMES: u8 = 6;
/// Tokens preserve draws from (few, so they collide).
const TOKENS: u64 = 5;

/// One step of a sequence.
#[derive(Clone, Debug)]
enum Op {
    /// `LIVEUPDATE_IOCTL_CREATE_SESSION` with name `s<n>`.
    Create(u8),
    /// A new test file preserved in session `s<n>` under a token.
    Preserve(u8, u64),
    /// `/dev/null`, which no handler accepts, preserved in session `s<n>`.
    PreserveUnsupported(u8),
    /// One file preserved twice (second time under another token).
    PreserveTwice(u8),
    /// The outgoing session `s<n>` closed: everything in it unpreserved.
    Close(u8),
    /// Reboot into a new kernel in this process, then retrieve and check everything.
    Kexec,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..NAMES).prop_map(Op::Create),
        6 => (0..NAMES, 0..TOKENS).prop_map(|(s, t)| Op::Preserve(s, t)),
        2 => (0..NAMES).prop_map(Op::PreserveUnsupported),
        2 => (0..NAMES).prop_map(Op::PreserveTwice),
        2 => (0..NAMES).prop_map(Op::Close),
        1 => Just(Op::Kexec),
    ]
}

/// The reference model: outgoing sessions by name, each with its tokens and file values.
#[derive(Default)]
struct Model {
    sessions: BTreeMap<String, BTreeMap<u64, u64>>,
}

/// The kernel under test and what the model expects of it.
struct Run {
    k: Kernel,
    dev: i32,
    /// Real session fds by name (the model's outgoing sessions).
    fds: BTreeMap<String, i32>,
    model: Model,
    /// Source of distinct file values.
    next_value: u64,
    kexecs: u32,
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if cond {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

fn boot(h: Option<luo_core::Handover>) -> Result<(Kernel, i32), TestCaseError> {
    let k = Kernel::boot(&BootOptions::default(), h)
        .map_err(|e| TestCaseError::fail(format!("boot: {e}")))?;
    testing::register(&k, false).map_err(|e| TestCaseError::fail(format!("register: {e}")))?;
    let dev = k
        .open_dev()
        .map_err(|e| TestCaseError::fail(format!("open: {e}")))?;
    Ok((k, dev))
}

impl Run {
    fn new() -> Result<Run, TestCaseError> {
        let (k, dev) = boot(None)?;
        Ok(Run {
            k,
            dev,
            fds: BTreeMap::new(),
            model: Model::default(),
            next_value: 1,
            kexecs: 0,
        })
    }

    fn value(&mut self) -> u64 {
        self.next_value += 1;
        self.next_value
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let k = &self.k;
        match *op {
            Op::Create(n) => {
                let name = format!("s{n}");
                let got = k.create_session(self.dev, &name);
                match self.model.sessions.entry(name.clone()) {
                    Entry::Occupied(_) => {
                        ensure(got == Err(Errno::EEXIST), || format!("{op:?}: {got:?}"))?;
                    }
                    Entry::Vacant(v) => {
                        let fd = got.map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
                        self.fds.insert(name, fd);
                        v.insert(BTreeMap::new());
                    }
                }
            }
            Op::Preserve(n, token) => {
                let name = format!("s{n}");
                let Some(&s) = self.fds.get(&name) else {
                    return Ok(());
                };
                let value = self.value();
                let k = &self.k;
                let f = k.test_file(value).expect("test file");
                let got = k.preserve_fd(s, f, token);
                let tokens = self.model.sessions.get_mut(&name).expect("modelled");
                match tokens.entry(token) {
                    Entry::Occupied(_) => {
                        ensure(got == Err(Errno::EEXIST), || format!("{op:?}: {got:?}"))?;
                    }
                    Entry::Vacant(v) => {
                        ensure(got == Ok(()), || format!("{op:?}: {got:?}"))?;
                        v.insert(value);
                    }
                }
                k.close(f).expect("close file");
            }
            Op::PreserveUnsupported(n) => {
                let Some(&s) = self.fds.get(&format!("s{n}")) else {
                    return Ok(());
                };
                let null = k.open_null().expect("null");
                let got = k.preserve_fd(s, null, 99);
                ensure(got == Err(Errno::ENOENT), || format!("{op:?}: {got:?}"))?;
                k.close(null).expect("close");
            }
            Op::PreserveTwice(n) => {
                let name = format!("s{n}");
                let Some(&s) = self.fds.get(&name) else {
                    return Ok(());
                };
                // Tokens above the random ones, fresh for this session.
                let tokens = self.model.sessions.get_mut(&name).expect("modelled");
                let token = tokens.keys().next_back().map_or(100, |t| (t + 1).max(100));
                let value = {
                    self.next_value += 1;
                    self.next_value
                };
                let f = k.test_file(value).expect("test file");
                let got = k.preserve_fd(s, f, token);
                ensure(got == Ok(()), || format!("{op:?}: first: {got:?}"))?;
                let again = k.preserve_fd(s, f, token + 1);
                ensure(again == Err(Errno::EBUSY), || {
                    format!("{op:?}: double preservation: {again:?}")
                })?;
                tokens.insert(token, value);
                k.close(f).expect("close");
            }
            Op::Close(n) => {
                let name = format!("s{n}");
                if let Some(s) = self.fds.remove(&name) {
                    k.close(s).expect("close session");
                    self.model.sessions.remove(&name);
                }
            }
            Op::Kexec => self.kexec()?,
        }
        Ok(())
    }

    /// Reboots into a new kernel and checks that it hands back exactly the model's sessions;
    /// finishes them, so the sequence goes on in a kernel with nothing outgoing.
    fn kexec(&mut self) -> Result<(), TestCaseError> {
        self.kexecs += 1;
        let n = self.kexecs;
        let h = self
            .k
            .kexec()
            .map_err(|e| TestCaseError::fail(format!("kexec {n}: {e}")))?;
        let (k2, dev2) = boot(Some(h))?;
        let fail = |what: String| TestCaseError::fail(format!("after kexec {n}: {what}"));
        for (name, tokens) in &self.model.sessions {
            let s = k2
                .retrieve_session(dev2, name)
                .map_err(|e| fail(format!("retrieve {name}: {e}")))?;
            let again = k2.retrieve_session(dev2, name);
            ensure(again == Err(Errno::EINVAL), || {
                format!("after kexec {n}: {name} retrieved twice: {again:?}")
            })?;
            for (&token, &value) in tokens {
                let fd = k2
                    .retrieve_fd(s, token)
                    .map_err(|e| fail(format!("{name}/{token}: {e}")))?;
                let got = k2.file(fd).expect("file").test_value();
                ensure(got == Some(value), || {
                    format!("after kexec {n}: {name}/{token}: {got:?}, expected {value}")
                })?;
                k2.close(fd).expect("close");
            }
            let unknown = k2.retrieve_fd(s, 4242);
            ensure(unknown == Err(Errno::ENOENT), || {
                format!("after kexec {n}: {name}: unknown token: {unknown:?}")
            })?;
            k2.finish_session(s)
                .map_err(|e| fail(format!("finish {name}: {e}")))?;
            k2.close(s).expect("close");
        }
        for i in 0..NAMES {
            let name = format!("s{i}");
            if !self.model.sessions.contains_key(&name) {
                let got = k2.retrieve_session(dev2, &name);
                ensure(got == Err(Errno::ENOENT), || {
                    format!("after kexec {n}: {name} was never kept: {got:?}")
                })?;
            }
        }
        let st = k2.stats();
        ensure(
            (st.kho.incoming_pages, st.preserved_beyond_root()) == (0, 0),
            || format!("after kexec {n}: left behind: {st:?}"),
        )?;
        self.k = k2;
        self.dev = dev2;
        self.fds.clear();
        self.model = Model::default();
        Ok(())
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut r = Run::new()?;
    for (i, op) in ops.iter().enumerate() {
        r.step(op)
            .map_err(|e| TestCaseError::fail(format!("step {i}: {e}")))?;
    }
    // Whatever the sequence left preserved crosses one last time.
    r.kexec()
}

/// Sequences run; under Miri (the serialization paths with heap backing) a few short ones.
const CASES: u32 = if cfg!(miri) { 2 } else { 300 };
const MAX_OPS: usize = if cfg!(miri) { 25 } else { 150 };

proptest! {
    #![proptest_config(Config {
        cases: CASES,
        rng_seed: RngSeed::Fixed(0x5eed),
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn random_uapi_sequences_with_kexecs_match_the_model(
        ops in prop::collection::vec(op(), 1..MAX_OPS)
    ) {
        run(&ops)?;
    }
}

/// The checks can fail: a model that expects another value for a preserved file is caught at
/// the kexec.
#[test]
fn a_wrong_model_is_caught() {
    let mut r = Run::new().expect("boot");
    r.step(&Op::Create(0)).expect("create");
    r.step(&Op::Preserve(0, 1)).expect("preserve");
    *r.model
        .sessions
        .get_mut("s0")
        .and_then(|t| t.get_mut(&1))
        .expect("modelled") += 1;
    let err = r.kexec().expect_err("a wrong value went unnoticed");
    assert!(err.to_string().contains("expected"), "{err}");
}
