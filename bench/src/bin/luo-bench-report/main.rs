// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `luo-bench-report`: runs the benchmark suite, compares every row with its baseline **in
//! the same run**, and writes `BENCHMARKS.md` (repository root) and `target/luo-bench.json`.
//!
//! ```sh
//! cargo run -p luo-bench --release --bin luo-bench-report            # everything (~5 min)
//! cargo run -p luo-bench --release --bin luo-bench-report -- --quick # fewer rounds, no
//!                                                                    # macro_compile, no 16 GiB
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
use luo_bench::handover::{self, FOLIOS_1G};
use luo_bench::measure::{self, Samples};
use luo_core::KernelVersion;
use serde::Serialize;

mod handover_rows;
mod micro;

use handover_rows::*;
use micro::*;

#[derive(Clone, Debug, Default)]
struct Opts {
    quick: bool,
    callgrind: bool,
    compile: bool,
    write: bool,
    only: Option<Vec<String>>,
    /// A `luo-bench-report` built from an older commit, and its label: the `blackout` rows
    /// run its blackout child too, alternating with this one's, for same-run ratios.
    baseline: Option<(PathBuf, String)>,
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
struct Report {
    command: &'static str,
    date: String,
    machine: Machine,
    rows: Vec<Row>,
}

#[derive(Serialize)]
struct Machine {
    cpus: usize,
    rustc: String,
    valgrind: Option<String>,
    quick: bool,
    /// 1-minute load average (`/proc/loadavg`) when the suite started and when it ended: the
    /// machine is shared, and wall values move with it.
    load_start: Option<f64>,
    load_end: Option<f64>,
}

/// The 1-minute load average, if `/proc/loadavg` is readable.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What each id measures, for BENCHMARKS.md.
const ROW_DOCS: &[(&str, &str)] = &[
    (
        "dispatch",
        "the callbacks of one file through the ops table luo-core registered, as the core calls \
         them from `PRESERVE_FD` to the session's release: `can_preserve`, the identity (no \
         `get_id`: the file's address), `preserve`, `unpreserve`. One luo-core `Kernel` holds \
         both handlers: a `#[liveupdate_handler]` handler registered with \
         `Kernel::register_handler` (`generated`) and the same handler written by hand against \
         the generated C table (`#[repr(C)]` struct, hand-filled `liveupdate_file_ops` of \
         `unsafe extern \"C\"` callbacks, registered with `Kernel::register_raw_handler`: the \
         baseline), and, for context, the same handler in C (`gcc -O2`, registered the same \
         way; it reaches KHO through luo-core's C API, `luo_kho_*`, which finds the thread's \
         current kernel on each call, and the file's state through one accessor). The file is a luo-core `CoreFile` (a synthetic file; what `struct file *` \
         is). Each preserve writes a 48-byte `memfd_luo_ser` into memory from luo-core's \
         `kho_alloc_preserve`, each unpreserve reads it back and frees it. The caller takes the \
         registered `struct liveupdate_file_handler *` (`Luo::handler_ptr`) and a copy of its \
         table (as the core keeps), handler, table and file through `black_box`. `wall` in ns \
         per file, `instructions` per file from callgrind (100,000 files). Target: same \
         instruction count as hand-written Rust, ratio <= 1.05.",
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
         backend (`std_backend`, which carries the target) and, as a diagnostic variant \
         without target, a one-mutex backend (`mutex_backend`), against \
         `std::sync::Mutex` lock + unlock timed in the same rounds. The host returns at once \
         (luo-core's own locking around handler-scoped state lookups is not in this row; an \
         FLB get whose object is live does not call the host). Target ratio <= 1.5.",
    ),
    (
        "memfd_preserve",
        "`PRESERVE_FD` of a 1 GiB memfd (262,144 4 KiB folios) on a 7.3 kernel of the model \
         (`luo-core` + the memfd handler writing `memfd-v2`): every folio preserved in KHO and its \
         16-byte `memfd_luo_folio_ser` record written into a preserved vmalloc area. `record` is \
         the whole call minus the host-side listing and pinning of the folios \
         (`ShmemFile::pin_folios` + unpin, timed separately in the same round: `pin`), per folio, \
         against a `memcpy` of the 4 MiB of records between pre-faulted buffers. The memfd is a \
         sparse host memfd (its pages are never faulted). Target ratio <= 3.",
    ),
    (
        "memfd_retrieve",
        "`RETRIEVE_FD` in the next kernel (in-process kexec) of the memfd preserved as above: \
         read and validate the `memfd_luo_ser`, restore and walk the vmalloc area, validate and \
         restore every folio and install it in the new file (the very same host memfd, no data \
         copied). Per folio, against `memcpy` of the records. 2^18 folios (1 GiB) carries the \
         target (ratio <= 3); 2^14 (64 MiB) and 2^22 (16 GiB) show the scaling.",
    ),
    (
        "migrate_v1",
        "`RETRIEVE_FD` of a 1 GiB memfd that a 7.0 kernel preserved as `memfd-v1` (LUO `luo-v1` \
         FDT; the reading kernel's `memfd-v1` reader migrates the struct through the generated \
         `From<v1::memfd_luo_ser>`), against the same memfd preserved by 7.3 as `memfd-v2`, \
         rounds alternating; read by 7.3 (whose own format is `memfd-v2`) and by next (the \
         newest handler). Target ratio <= 1.3.",
    ),
    (
        "sessions",
        "2,000 sessions holding 10,000 files of the core's test handler (`luo-test-v1`, 5 per \
         session): `reboot()` on the 7.3 kernel (freeze every file through its ops table, write \
         the `luo_session_ser` and `luo_file_ser` block chains, the KHO handover), then the next \
         kernel's boot (read the LUO root and the session chain) and first open of \
         `/dev/liveupdate` (deserialize every session and bind every file to its handler); every \
         session and file checked to come back. Per entry (12,000), against `memcpy` of the \
         entry bytes (2,000 x 80 + 10,000 x 64 bytes) once out and once back. Target ratio <= 5.",
    ),
    (
        "sessions_scaling",
        "10^3, 10^4 and 10^5 empty sessions (`luo simulate --sessions N --files 0`) preserved, \
         then across an in-process kexec: the next kernel's boot and first open of \
         `/dev/liveupdate` (deserialize), `RETRIEVE_SESSION` of every session, `FINISH` and close \
         of every session. Each size against the one ten times smaller: linear scaling is a \
         ratio of 10. Target: 10^5 sessions cost at most 12x 10^4.",
    ),
    (
        "blackout",
        "one run in a child process (so its peak RSS is its own): a 7.3 kernel with a 4 GiB \
         memfd (4 KiB folios; 1,024 pages spread over it written with a pattern) in the first of \
         2,000 sessions, plus 10,000 test files; `reboot()` -> boot of the next kernel from the \
         handover (in-process kexec) -> open `/dev/liveupdate`, retrieve every session and every \
         file. `bytes_copied` is file data copied into retrieved memfds: the core's counter \
         (`luo_core::file::file_data_copied`) plus the memfd handler's copied/zeroed folios, and \
         the whole file if the retrieved memfd were not the very same host file (device and \
         inode compared); the written pages are read back and checked. `peak_rss` is VmHWM of \
         the child against the KHO arena memory handed over (folio array, LUO blocks, the test \
         handler's page per file) plus the touched pages; the old kernel is freed after \
         `reboot()`, outside the timed phases. `total` is the sum of the three timed phases \
         (medians of 3 runs, 1 with `--quick`). `grows_with_memory` is the share of `total` the \
         guest memory adds over the same machine with 4 KiB of guest memory, and its cost per \
         GiB. `64GiB-hugetlb` is a VM whose guest memory is a HugeTLB memfd \
         (`huge-memfd-v1`, HugeTLB pools handed over as upstream's FLB) of 32,768 2 MiB folios, \
         all allocated; its pages are the model's arena folios, so `same memory` compares the \
         folios' addresses before and after. The full run adds a 16 GiB memfd. With \
         `--baseline-exe PATH LABEL` the 4 GiB machine also runs the blackout child of an older \
         build, alternating, and its phases are the baseline (target: `retrieve` at most a \
         quarter of the older build's).",
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
            "--baseline-exe" => {
                let exe = it.next().map(PathBuf::from);
                let label = it.next().cloned();
                match (exe, label) {
                    (Some(e), Some(l)) => o.baseline = Some((e, l)),
                    _ => {
                        eprintln!("--baseline-exe takes a path and a label (see --help)");
                        std::process::exit(2);
                    }
                }
            }
            "--only" => {
                o.only = it
                    .next()
                    .map(|s| s.split(',').map(str::to_string).collect())
            }
            "-h" | "--help" => {
                println!(
                    "{COMMAND} [-- --quick] [--no-callgrind] [--no-compile] [--no-write] [--only id,...] [--baseline-exe PATH LABEL]"
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
    let load_start = load_average();
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
    if o.wants("memfd_preserve") {
        step("memfd_preserve", &mut rows, memfd_preserve(&o));
    }
    if o.wants("memfd_retrieve") {
        step("memfd_retrieve", &mut rows, memfd_retrieve(&o));
    }
    if o.wants("migrate_v1") {
        step("migrate_v1", &mut rows, migrate_v1(&o));
    }
    if o.wants("sessions") {
        step("sessions", &mut rows, sessions(&o));
    }
    if o.wants("sessions_scaling") {
        step("sessions_scaling", &mut rows, sessions_scaling(&o));
    }
    if o.wants("blackout") {
        step("blackout", &mut rows, blackout(&o));
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
            load_start,
            load_end: load_average(),
        },
        rows,
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
    luo_schema::output::today()
}

// ---------------------------------------------------------------------------------------------
// Children run under callgrind.

fn child(args: &[String]) {
    if args.first().map(String::as_str) == Some("blackout") {
        const USAGE: &str = "child blackout <folios> <sessions> <files> <touched> [memfd|hugetlb]";
        let num = |i: usize| -> u64 { args.get(i).and_then(|s| s.parse().ok()).expect(USAGE) };
        let guest = args
            .get(5)
            .map_or(Some(handover::Guest::Memfd), |g| handover::Guest::parse(g))
            .expect(USAGE);
        match handover::blackout(guest, num(1), num(2), num(3), num(4)) {
            Ok(b) => println!("{}", serde_json::to_string(&b).expect("serializable")),
            Err(e) => {
                eprintln!("blackout: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
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
        // Profiling targets (`valgrind --tool=callgrind ... child handover preserve 1`).
        "handover" => {
            let r = match arg(1) {
                "preserve" => handover::MemfdFixture::new(KernelVersion::V7_3, FOLIOS_1G)
                    .and_then(|mut f| (0..n).try_for_each(|_| f.time_preserve().map(drop))),
                "retrieve" => (0..n).try_for_each(|_| {
                    handover::time_retrieve(KernelVersion::V7_3, KernelVersion::V7_3, FOLIOS_1G)
                        .map(drop)
                }),
                "sessions" => (0..n).try_for_each(|_| {
                    handover::SessionsFixture::new(KernelVersion::V7_3, SESSIONS, FILES, 0)
                        .and_then(handover::time_sessions)
                        .map(drop)
                }),
                other => panic!("handover op {other}"),
            };
            r.expect("workload");
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
        "Run on {} on a {}-CPU machine{}, {}{}{}. Wall-clock values are medians over rounds in \
         which the variants of a row alternate, and every ratio compares numbers from **the same \
         run**; instruction counts come from `valgrind --tool=callgrind` and do not depend on load. \
         Raw numbers: `target/luo-bench.json`.\n",
        rep.date,
        rep.machine.cpus,
        match (rep.machine.load_start, rep.machine.load_end) {
            (Some(a), Some(b)) => format!(
                " (shared: 1-minute load average {a:.1} at the start, {b:.1} at the end{})",
                if a.max(b) > rep.machine.cpus as f64 {
                    ", so the machine was **loaded** and wall values are noisy"
                } else {
                    ""
                }
            ),
            _ => String::new(),
        },
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
        "Reproduce: `{COMMAND}` (add `-- --quick` for a short run without `macro_compile` and the 16 GiB `blackout`). Divan benches of the same workloads: `cargo bench -p luo-bench`.\n"
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
    let analysis = repo_root().join("bench/ANALYSIS.md");
    if let Ok(a) = std::fs::read_to_string(&analysis) {
        let _ = writeln!(s, "\n{}", a.trim_end());
    }
    s
}
