//! `luo-bench-report`: runs the benchmark suite, compares every row with its baseline **in
//! the same run**, and writes `BENCHMARKS.md` (repository root) and `target/luo-bench.json`.
//!
//! ```sh
//! cargo run -p luo-bench --release --bin luo-bench-report            # everything (~3-5 min)
//! cargo run -p luo-bench --release --bin luo-bench-report -- --quick # fewer rounds, no macro_compile
//! ```
//!
//! Options: `--quick`, `--no-callgrind`, `--no-compile`, `--only dispatch,gen,...`,
//! `--no-write` (print only). `child ...` is internal: the workloads the report runs under
//! `valgrind --tool=callgrind`.
//!
//! Wall-clock variants of a row are timed in alternation and reported as medians over rounds
//! (see `luo_bench::measure`); instruction counts come from callgrind as
//! (total(n iterations) − total(0)) / n.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use luo_bench::codec::{Codec, CodecBench, FOLIOS};
use luo_bench::dispatch::{Dispatch, Variant};
use luo_bench::global::{Backend, Op, mutex_lock_unlock};
use luo_bench::measure::{self, Samples};
use serde::Serialize;

#[derive(Clone, Debug, Default)]
struct Opts {
    quick: bool,
    callgrind: bool,
    compile: bool,
    write: bool,
    only: Option<Vec<String>>,
}

impl Opts {
    fn wants(&self, id: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|x| x == id))
    }
    fn rounds(&self, full: usize) -> usize {
        if self.quick { (full / 4).max(5) } else { full }
    }
}

#[derive(Clone, Debug, Serialize)]
struct Baseline {
    name: String,
    value: f64,
    unit: String,
}

#[derive(Clone, Debug, Serialize)]
struct Row {
    /// The issue's id (`dispatch`, `abi_codec`, ...).
    id: String,
    /// Unique name of the measurement.
    name: String,
    /// What was measured.
    what: String,
    value: f64,
    unit: String,
    /// `wall-median` or `callgrind`.
    method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline: Option<Baseline>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<f64>,
    /// Human-readable target, e.g. `ratio <= 1.05`.
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meets: Option<bool>,
    /// Rounds (wall) or iterations (callgrind) behind the value.
    samples: u64,
}

#[derive(Clone, Copy, Debug)]
enum Target {
    None,
    MaxRatio(f64),
    MaxValue(f64),
}

struct RowSpec<'a> {
    id: &'a str,
    name: String,
    what: String,
    unit: &'a str,
    method: &'a str,
    target: Target,
    samples: u64,
}

fn row(spec: RowSpec<'_>, value: f64, baseline: Option<(&str, f64)>) -> Row {
    let ratio = baseline.map(|(_, b)| value / b);
    let (target, meets) = match spec.target {
        Target::None => (None, None),
        Target::MaxRatio(m) => (Some(format!("ratio <= {m}")), ratio.map(|r| r <= m)),
        Target::MaxValue(m) => (Some(format!("<= {m} {}", spec.unit)), Some(value <= m)),
    };
    Row {
        id: spec.id.into(),
        name: spec.name,
        what: spec.what,
        value,
        unit: spec.unit.into(),
        method: spec.method.into(),
        baseline: baseline.map(|(n, v)| Baseline {
            name: n.into(),
            value: v,
            unit: spec.unit.into(),
        }),
        ratio,
        target,
        meets,
        samples: spec.samples,
    }
}

#[derive(Serialize)]
struct Pending {
    id: &'static str,
    what: &'static str,
    baseline: &'static str,
    target: &'static str,
    reason: &'static str,
}

const PENDING: &[Pending] = &[
    Pending {
        id: "memfd_preserve",
        what: "record 262,144 folios (1 GiB of 4 KiB pages) into preserved memory, host faulting and pinning excluded",
        baseline: "memcpy of the same metadata bytes",
        target: "ratio <= 3",
        reason: "needs the memfd handler of issue 5 and the KHO model of luo-core (in progress)",
    },
    Pending {
        id: "memfd_retrieve",
        what: "validate and restore the same folios in the new kernel (and scaling at 2^14, 2^18, 2^22 folios)",
        baseline: "memcpy of the same bytes",
        target: "ratio <= 3",
        reason: "needs the memfd handler and luo-core's kexec model",
    },
    Pending {
        id: "migrate_v1",
        what: "read memfd-v1 data into the newest handler",
        baseline: "native memfd-v2 read",
        target: "ratio <= 1.3",
        reason: "needs the memfd handler (v1 reader with Migrate) over luo-core",
    },
    Pending {
        id: "sessions",
        what: "serialize + deserialize 2,000 sessions and 10,000 files (ns/entry)",
        baseline: "memcpy of the entry bytes",
        target: "ratio <= 5",
        reason: "needs luo-core's session serialization (luo_ser / session_v1)",
    },
    Pending {
        id: "blackout",
        what: "freeze -> in-process kexec -> retrieve all, 4 GiB memfd + 2,000 sessions; peak memory; bytes of file data copied",
        baseline: "-",
        target: "ms; 0 bytes copied",
        reason: "needs luo-core end to end (freeze, kexec model, retrieve)",
    },
];

#[derive(Serialize)]
struct Report {
    command: &'static str,
    date: String,
    machine: Machine,
    rows: Vec<Row>,
    pending: &'static [Pending],
}

#[derive(Serialize)]
struct Machine {
    cpus: usize,
    rustc: String,
    valgrind: Option<String>,
    quick: bool,
}

/// What each id measures, for BENCHMARKS.md.
const ROW_DOCS: &[(&str, &str)] = &[
    (
        "dispatch",
        "one `preserve` call through `handler->ops->preserve`, handler and file pointers through \
         `black_box`: the `#[liveupdate_handler]` table (`generated`) against the same handler \
         written by hand in Rust (`#[repr(C)]` struct, hand-filled table: the baseline) and in C \
         (`gcc -O2`, context). Each writes a 48-byte `memfd_luo_ser` into the same KHO ring. \
         `wall` in ns per call, `instructions` per call from callgrind (100,000 calls). \
         Target: same instruction count as hand-written Rust, ratio <= 1.05.",
    ),
    (
        "abi_codec",
        "encode / decode of 262,144 `memfd_luo_folio_ser` records (1 GiB of 4 KiB folios), per \
         record: generated bitfield accessors + `AbiType` check (`ours`) against a hand-written \
         zerocopy struct (the baseline); postcard for context. Target <= 1.1x zerocopy.",
    ),
    (
        "global_get_put",
        "uncontended get + guard drop of each global-state form (FLB, handler-scoped state, \
         subsystem; outgoing and incoming) through luo-abi's runtime, with the default lock \
         backend (`std_backend`) and a one-mutex backend (`mutex_backend`), against \
         `std::sync::Mutex` lock + unlock timed in the same rounds. The host returns at once \
         (the core's own locking is luo-core's, pending). Target ratio <= 1.5.",
    ),
    (
        "gen",
        "`luo gen` over every spec, in memory (`load_checked` + `generate`). Target <= 100 ms.",
    ),
    (
        "schema_diff",
        "`luo schema diff` of two synthetic snapshots (every tenth struct gains a member), as \
         the CLI runs it (facts and policy). No target.",
    ),
    (
        "macro_compile",
        "non-incremental debug `cargo build` of a scratch crate with 50 handlers written with \
         `#[liveupdate_handler]` against the same 50 written by hand (ops table and `extern \
         \"C\"` callbacks), dependencies prebuilt, builds alternating. Ratio reported.",
    ),
];

const COMMAND: &str = "cargo run -p luo-bench --release --bin luo-bench-report";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        child(&args[1..]);
        return;
    }
    let mut o = Opts {
        callgrind: true,
        compile: true,
        write: true,
        ..Opts::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {
                o.quick = true;
                o.compile = false;
            }
            "--no-callgrind" => o.callgrind = false,
            "--no-compile" => o.compile = false,
            "--no-write" => o.write = false,
            "--only" => {
                o.only = it
                    .next()
                    .map(|s| s.split(',').map(str::to_string).collect())
            }
            "-h" | "--help" => {
                println!(
                    "{COMMAND} [-- --quick] [--no-callgrind] [--no-compile] [--no-write] [--only id,...]"
                );
                return;
            }
            other => {
                eprintln!("unknown option {other} (see --help)");
                std::process::exit(2);
            }
        }
    }
    let valgrind = if o.callgrind && measure::callgrind_available() {
        valgrind_version()
    } else {
        None
    };
    if o.callgrind && valgrind.is_none() {
        eprintln!("valgrind not found: instruction counts skipped");
    }
    o.callgrind = valgrind.is_some();

    let mut rows = Vec::new();
    let t0 = Instant::now();
    if o.wants("dispatch") {
        step("dispatch", &mut rows, dispatch(&o));
    }
    if o.wants("abi_codec") {
        step("abi_codec", &mut rows, abi_codec(&o));
    }
    if o.wants("global_get_put") {
        step("global_get_put", &mut rows, global_get_put(&o));
    }
    if o.wants("gen") {
        step("gen", &mut rows, gen_rows(&o));
    }
    if o.wants("schema_diff") {
        step("schema_diff", &mut rows, schema_diff(&o));
    }
    if o.wants("macro_compile") && o.compile {
        step("macro_compile", &mut rows, macro_compile(&o));
    }
    eprintln!("suite ran in {:.0} s", t0.elapsed().as_secs_f64());

    let report = Report {
        command: COMMAND,
        date: today(),
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rustc: command_line("rustc", &["-V"]).unwrap_or_default(),
            valgrind,
            quick: o.quick,
        },
        rows,
        pending: PENDING,
    };
    let md = markdown(&report);
    print!("{}", summary_table(&report.rows));
    if o.write {
        let root = repo_root();
        let target = target_dir(&root);
        let json = serde_json::to_string_pretty(&report).expect("serializable");
        std::fs::create_dir_all(&target).expect("target dir");
        std::fs::write(target.join("luo-bench.json"), json + "\n").expect("writing luo-bench.json");
        std::fs::write(root.join("BENCHMARKS.md"), md).expect("writing BENCHMARKS.md");
        eprintln!(
            "wrote {} and {}",
            root.join("BENCHMARKS.md").display(),
            target.join("luo-bench.json").display()
        );
    }
    let missed: Vec<&str> = report
        .rows
        .iter()
        .filter(|r| r.meets == Some(false))
        .map(|r| r.name.as_str())
        .collect();
    if !missed.is_empty() {
        eprintln!(
            "targets missed (see BENCHMARKS.md, Analysis): {}",
            missed.join(", ")
        );
    }
}

fn step(id: &str, rows: &mut Vec<Row>, r: Result<Vec<Row>, String>) {
    match r {
        Ok(mut v) => {
            eprintln!("{id}: {} rows", v.len());
            rows.append(&mut v);
        }
        Err(e) => eprintln!("{id}: FAILED: {e}"),
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is in the repository")
        .to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(cmd).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn valgrind_version() -> Option<String> {
    command_line("valgrind", &["--version"])
}

/// UTC date of now, `YYYY-MM-DD`.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

// ---------------------------------------------------------------------------------------------
// Children run under callgrind.

fn child(args: &[String]) {
    let n: u64 = args
        .last()
        .and_then(|s| s.parse().ok())
        .expect("child ... <n>");
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(0) {
        "dispatch" => {
            let d = Dispatch::new();
            let v = Variant::parse(arg(1)).expect("variant");
            black_box(d.run(v, n));
        }
        "codec" => {
            let c = Codec::parse(arg(2)).expect("codec");
            let mut b = CodecBench::new(FOLIOS);
            b.encode(c);
            for _ in 0..n {
                match arg(1) {
                    "encode" => b.encode(c),
                    "decode" => b.decode(c),
                    other => panic!("codec op {other}"),
                }
            }
        }
        "global" => {
            if arg(1) == "mutex" {
                let m = Mutex::new(7u64);
                black_box(mutex_lock_unlock(&m, n));
            } else {
                let f = Backend::parse(arg(1)).expect("backend").fixture();
                let op = Op::parse(arg(2)).expect("op");
                black_box(f.get_put(op, n));
            }
        }
        other => panic!("unknown child {other}"),
    }
}

fn exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("current_exe: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Rows.

/// Variants of a row timed together, one of them the baseline.
struct Group<'a> {
    id: &'a str,
    prefix: &'a str,
    what: &'a str,
    unit: &'a str,
    names: &'a [&'a str],
    baseline: usize,
    target: Target,
    /// Variants shown for context only (no target).
    context: &'a [usize],
}

fn wall_ratio_rows(g: Group<'_>, samples: &[Samples]) -> Vec<Row> {
    let Group {
        id,
        prefix,
        what,
        unit,
        names,
        baseline,
        target,
        context,
    } = g;
    let b = samples[baseline].median();
    let mut out = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        if i == baseline {
            continue;
        }
        let t = if context.contains(&i) {
            Target::None
        } else {
            target
        };
        out.push(row(
            RowSpec {
                id,
                name: format!("{prefix}/{}", names[i]),
                what: format!("{what}: {} vs {}", names[i], names[baseline]),
                unit,
                method: "wall-median",
                target: t,
                samples: s.ns.len() as u64,
            },
            s.median(),
            Some((names[baseline], b)),
        ));
    }
    out
}

fn dispatch(o: &Opts) -> Result<Vec<Row>, String> {
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
    let what = "one preserve through the ops table (ns/call)";
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
                        "instructions per preserve call (callgrind): {} vs hand_rust",
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

fn abi_codec(o: &Opts) -> Result<Vec<Row>, String> {
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

fn global_get_put(o: &Opts) -> Result<Vec<Row>, String> {
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
                    target: Target::MaxRatio(1.5),
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

fn median_ms(runs: usize, mut f: impl FnMut()) -> (f64, u64) {
    f();
    let v: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    (measure::median(&v), runs as u64)
}

fn gen_rows(o: &Opts) -> Result<Vec<Row>, String> {
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

fn schema_diff(o: &Opts) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for structs in [100usize, 1000] {
        let old = luo_bench::synthetic_snapshot(structs, 50, false);
        let new = luo_bench::synthetic_snapshot(structs, 50, true);
        let (ms, n) = median_ms(o.rounds(21), || {
            let d = luo_spec::schema_diff::diff_component(black_box(&old), black_box(&new));
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

fn macro_compile(o: &Opts) -> Result<Vec<Row>, String> {
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

// ---------------------------------------------------------------------------------------------
// Output.

fn fmt_value(v: f64, unit: &str) -> String {
    let n = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    format!("{n} {unit}")
}

fn meets_cell(r: &Row) -> &'static str {
    match r.meets {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "-",
    }
}

fn summary_table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| id | measurement | value | baseline | ratio | target | meets |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} | {} | {} |",
            r.id,
            r.name,
            fmt_value(r.value, &r.unit),
            r.baseline.as_ref().map_or("-".to_string(), |b| format!(
                "{} {}",
                b.name,
                fmt_value(b.value, &b.unit)
            )),
            r.ratio.map_or("-".to_string(), |x| format!("{x:.3}")),
            r.target.as_deref().unwrap_or("-"),
            meets_cell(r),
        );
    }
    s
}

fn markdown(rep: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Benchmarks\n\n<!-- Written by `{COMMAND}`; edit bench/ANALYSIS.md for the analysis part. -->\n"
    );
    let _ = writeln!(
        s,
        "Run on {} on a {}-CPU machine, {}{}{}. Wall-clock values are medians over rounds in \
         which the variants of a row alternate, and every ratio compares numbers from **the same \
         run**; instruction counts come from `valgrind --tool=callgrind` and do not depend on load. \
         Raw numbers: `target/luo-bench.json`.\n",
        rep.date,
        rep.machine.cpus,
        rep.machine.rustc,
        rep.machine.valgrind.as_ref().map_or(
            ", no valgrind (instruction counts skipped)".to_string(),
            |v| format!(", {v}")
        ),
        if rep.machine.quick {
            ", **--quick**"
        } else {
            ""
        },
    );
    let _ = writeln!(
        s,
        "Reproduce: `{COMMAND}` (add `-- --quick` for a short run without `macro_compile`). Divan benches of the same workloads: `cargo bench -p luo-bench`.\n"
    );
    let _ = writeln!(s, "## Results\n");
    s.push_str(&summary_table(&rep.rows));
    let missed: Vec<&Row> = rep.rows.iter().filter(|r| r.meets == Some(false)).collect();
    if missed.is_empty() {
        let _ = writeln!(s, "\nEvery target with a measurement is met.");
    } else {
        let _ = writeln!(
            s,
            "\nTargets missed in this run: {}. Profiles, causes and changes: see Analysis below.",
            missed
                .iter()
                .map(|r| format!("`{}`", r.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(s, "\n### What the rows measure\n");
    for (id, what) in ROW_DOCS {
        if rep.rows.iter().any(|r| r.id == *id) {
            let _ = writeln!(s, "- `{id}`: {what}");
        }
    }
    let _ = writeln!(
        s,
        "\n## Pending (need the LUO core)\n\n| id | what | baseline | target | why pending |\n|---|---|---|---|---|"
    );
    for p in rep.pending {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} |",
            p.id, p.what, p.baseline, p.target, p.reason
        );
    }
    let analysis = repo_root().join("bench/ANALYSIS.md");
    if let Ok(a) = std::fs::read_to_string(&analysis) {
        let _ = writeln!(s, "\n{}", a.trim_end());
    }
    s
}
