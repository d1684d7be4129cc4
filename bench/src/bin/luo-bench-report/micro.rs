// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The rows of single operations: dispatch through the ops table, the ABI codec, global-state
//! get/put, `luo gen`, the schema diff and the macros' compile time.

use std::hint::black_box;
use std::sync::Mutex;

use luo_bench::codec::{Codec, CodecBench, FOLIOS};
use luo_bench::dispatch::{Dispatch, Variant};
use luo_bench::global::{Backend, Op, mutex_lock_unlock};
use luo_bench::measure::{self};

use super::*;

pub(super) fn dispatch(o: &Opts) -> Result<Vec<Row>, String> {
    let d = Dispatch::new();
    let names: Vec<&str> = Variant::ALL.iter().map(|v| v.name()).collect();
    let mut fs: Vec<Box<dyn FnMut(u64)>> = Variant::ALL
        .iter()
        .map(|&v| {
            let d = &d;
            Box::new(move |n| {
                black_box(d.run(v, n));
            }) as Box<dyn FnMut(u64)>
        })
        .collect();
    let batch = measure::calibrate(&mut *fs[0], 2.0);
    let mut refs: Vec<&mut dyn FnMut(u64)> = fs.iter_mut().map(|f| &mut **f as _).collect();
    let s = measure::interleaved(&mut refs, batch, o.rounds(101));
    let what = "can_preserve + preserve + unpreserve of one file through the ops table luo-core registered (ns/file)";
    let mut rows = wall_ratio_rows(
        Group {
            id: "dispatch",
            prefix: "dispatch/wall",
            what,
            unit: "ns",
            names: &names,
            baseline: 1,
            target: Target::MaxRatio(1.05),
            context: &[2],
        },
        &s,
    );
    if o.callgrind {
        let exe = exe()?;
        let n = 100_000;
        let mut ins = Vec::new();
        for v in Variant::ALL {
            ins.push(measure::callgrind_per_iter(
                &exe,
                &["child", "dispatch", v.name()],
                n,
            )?);
        }
        for (i, v) in Variant::ALL.iter().enumerate() {
            if *v == Variant::HandRust {
                continue;
            }
            rows.push(row(
                RowSpec {
                    id: "dispatch",
                    name: format!("dispatch/instructions/{}", v.name()),
                    what: format!(
                        "instructions per file (can_preserve + preserve + unpreserve through luo-core's registered table; callgrind): {} vs hand_rust",
                        v.name()
                    ),
                    unit: "instructions",
                    method: "callgrind",
                    target: if *v == Variant::Generated {
                        Target::MaxRatio(1.05)
                    } else {
                        Target::None
                    },
                    samples: n,
                },
                ins[i],
                Some(("hand_rust", ins[1])),
            ));
        }
    }
    Ok(rows)
}

pub(super) fn abi_codec(o: &Opts) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let names: Vec<&str> = Codec::ALL.iter().map(|c| c.name()).collect();
    for op in ["encode", "decode"] {
        let mut benches: Vec<CodecBench> = Codec::ALL
            .iter()
            .map(|&c| {
                let mut b = CodecBench::new(FOLIOS);
                b.encode(c);
                b
            })
            .collect();
        let mut fs: Vec<Box<dyn FnMut(u64) + '_>> = benches
            .iter_mut()
            .zip(Codec::ALL)
            .map(|(b, c)| {
                Box::new(move |n: u64| {
                    for _ in 0..n {
                        if op == "encode" {
                            b.encode(c)
                        } else {
                            b.decode(c)
                        }
                    }
                }) as Box<dyn FnMut(u64) + '_>
            })
            .collect();
        let batch = measure::calibrate(&mut *fs[0], 5.0);
        let mut refs: Vec<&mut dyn FnMut(u64)> = fs.iter_mut().map(|f| &mut **f as _).collect();
        let mut s = measure::interleaved(&mut refs, batch, o.rounds(41));
        // Per record.
        for x in &mut s {
            x.ns.iter_mut().for_each(|v| *v /= FOLIOS as f64);
        }
        rows.extend(wall_ratio_rows(
            Group {
                id: "abi_codec",
                prefix: &format!("abi_codec/{op}/wall"),
                what: &format!("{op} 262,144 memfd folio records (ns/record)"),
                unit: "ns",
                names: &names,
                baseline: 1,
                target: Target::MaxRatio(1.1),
                context: &[2],
            },
            &s,
        ));
        if o.callgrind {
            let exe = exe()?;
            let mut ins = Vec::new();
            for c in [Codec::Ours, Codec::Zerocopy] {
                let per_pass =
                    measure::callgrind_per_iter(&exe, &["child", "codec", op, c.name()], 2)?;
                ins.push(per_pass / FOLIOS as f64);
            }
            rows.push(row(
                RowSpec {
                    id: "abi_codec",
                    name: format!("abi_codec/{op}/instructions/ours"),
                    what: format!("instructions per record (callgrind), {op}: ours vs zerocopy"),
                    unit: "instructions",
                    method: "callgrind",
                    target: Target::MaxRatio(1.1),
                    samples: 2 * FOLIOS as u64,
                },
                ins[0],
                Some(("zerocopy", ins[1])),
            ));
        }
    }
    Ok(rows)
}

pub(super) fn global_get_put(o: &Opts) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let m = Mutex::new(7u64);
    let mut base_ins = None;
    if o.callgrind {
        base_ins = Some(measure::callgrind_per_iter(
            &exe()?,
            &["child", "global", "mutex"],
            100_000,
        )?);
    }
    for b in Backend::ALL {
        let f = b.fixture();
        for op in Op::ALL {
            let mut a = |n| {
                black_box(f.get_put(op, n));
            };
            let mut base = |n| {
                black_box(mutex_lock_unlock(&m, n));
            };
            let batch = measure::calibrate(&mut a, 2.0);
            let s = measure::interleaved(&mut [&mut a, &mut base], batch, o.rounds(41));
            let name = format!("{}/{}", op.name(), b.name());
            rows.extend(wall_ratio_rows(
                Group {
                    id: "global_get_put",
                    prefix: "global_get_put/wall",
                    what: "uncontended get + put (ns)",
                    unit: "ns",
                    names: &[name.as_str(), "std_mutex"],
                    baseline: 1,
                    // The target is the default backend's, what handlers get; the one-mutex
                    // backend is a diagnostic variant (context).
                    target: if b == Backend::Std {
                        Target::MaxRatio(1.5)
                    } else {
                        Target::None
                    },
                    context: &[],
                },
                &s,
            ));
            if let Some(bi) = base_ins {
                let v = measure::callgrind_per_iter(
                    &exe()?,
                    &["child", "global", b.name(), op.name()],
                    100_000,
                )?;
                rows.push(row(
                    RowSpec {
                        id: "global_get_put",
                        name: format!("global_get_put/instructions/{name}"),
                        what: format!(
                            "instructions per get + put (callgrind): {name} vs std_mutex"
                        ),
                        unit: "instructions",
                        method: "callgrind",
                        target: Target::None,
                        samples: 100_000,
                    },
                    v,
                    Some(("std_mutex", bi)),
                ));
            }
        }
    }
    Ok(rows)
}

pub(super) fn gen_rows(o: &Opts) -> Result<Vec<Row>, String> {
    let dir = luo_bench::luo_gen::spec_dir();
    let (files, bytes) = luo_bench::luo_gen::run(&dir);
    let (ms, n) = median_ms(o.rounds(21), || {
        black_box(luo_bench::luo_gen::run(black_box(&dir)));
    });
    Ok(vec![row(
        RowSpec {
            id: "gen",
            name: "gen".into(),
            what: format!(
                "`luo gen` over every spec in memory (load + check + layout + render {files} files, {} KiB)",
                bytes / 1024
            ),
            unit: "ms",
            method: "wall-median",
            target: Target::MaxValue(100.0),
            samples: n,
        },
        ms,
        None,
    )])
}

pub(super) fn schema_diff(o: &Opts) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for structs in [100usize, 1000] {
        let old = luo_bench::synthetic_snapshot(structs, 50, false);
        let new = luo_bench::synthetic_snapshot(structs, 50, true);
        let (ms, n) = median_ms(o.rounds(21), || {
            let d = luo_schema::diff::diff_component(black_box(&old), black_box(&new));
            black_box(d.findings.len());
        });
        rows.push(row(
            RowSpec {
                id: "schema_diff",
                name: format!("schema_diff/{structs}x50"),
                what: format!(
                    "`luo schema diff` of {structs} packed structs x 50 u64 fields on 5 targets"
                ),
                unit: "ms",
                method: "wall-median",
                target: Target::None,
                samples: n,
            },
            ms,
            None,
        ));
    }
    Ok(rows)
}

pub(super) fn macro_compile(o: &Opts) -> Result<Vec<Row>, String> {
    let root = repo_root();
    let dir = luo_bench::compile::scratch_dir(&target_dir(&root));
    let t = luo_bench::compile::time_builds(&dir, &root, o.rounds(5).min(5))?;
    let g = measure::median(&t.generated);
    let h = measure::median(&t.hand);
    Ok(vec![row(
        RowSpec {
            id: "macro_compile",
            name: "macro_compile/debug".into(),
            what: format!(
                "`cargo build` (debug, non-incremental) of a crate with {n} handlers: #[liveupdate_handler] ({} lines) vs by hand ({} lines)",
                t.lines.0,
                t.lines.1,
                n = luo_bench::compile::HANDLERS
            ),
            unit: "s",
            method: "wall-median",
            target: Target::None,
            samples: t.generated.len() as u64,
        },
        g,
        Some(("hand-written", h)),
    )])
}
