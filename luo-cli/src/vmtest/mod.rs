// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `luo vmtest`: the real kernel as the oracle.
//!
//! The same C programs run as stages across live updates twice: on a real LUO kernel booted in
//! QEMU ([`real`]: each stage one boot, the next entered with `kexec_file_load` +
//! `reboot(LINUX_REBOOT_CMD_KEXEC)`), and under the simulator ([`sim`]: the daemon, the preload
//! library and `luo sim kexec` between stages). Each program's stdout, stderr and exit status
//! are collected per stage; `--diff` compares the two runs line by line.
//!
//! A program is given as `SOURCE[,SOURCE...] [ARGS...]` (compiled here with gcc: `-static` for
//! the guest, dynamically linked for the simulator, whose preload library a static program would
//! not load) or as `BINARY [ARGS...]` (used as it is; static for the kernel, dynamic for the
//! simulator). `{stage}` in ARGS becomes the stage number; every program also finds it in
//! `$LUO_VMTEST_STAGE`. Every program runs in every stage, in the order given.

mod cpio;
mod image;
mod real;
mod sim;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use luo_schema::output::Reporter;

/// An error with what failed and what to do next.
#[derive(Debug)]
pub struct VmError(pub String);

impl std::fmt::Display for VmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VmError {}

macro_rules! bail {
    ($($t:tt)*) => { return Err(VmError(format!($($t)*))) };
}
pub(crate) use bail;

/// Which machines run the programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The real kernel in QEMU.
    Kernel,
    /// The simulator.
    Sim,
    /// Both, compared.
    Diff,
}

/// What `luo vmtest` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Repository root (for `generated/include/uapi` and the default kernel).
    pub root: PathBuf,
    /// The kernel image (default: [`default_kernel`]).
    pub kernel: Option<PathBuf>,
    /// Images for stage 2, 3, ... (the last one for every later stage); empty: `kernel` for
    /// every stage.
    pub next_kernels: Vec<PathBuf>,
    /// Kernel, simulator or both.
    pub mode: Mode,
    /// Stages (boots) each program runs in.
    pub stages: u32,
    /// Program specs, see the module docs.
    pub programs: Vec<String>,
    /// Extra `-I` directories for compiling sources.
    pub include: Vec<PathBuf>,
    /// Seconds the whole QEMU run may take.
    pub timeout: u64,
    /// Keep the work directory (initramfs, binaries, console log) here.
    pub keep: Option<PathBuf>,
    /// With `--diff`: stdout lines containing any of these are left out of the comparison on
    /// both sides (lines that differ by nature, such as a printed pid).
    pub ignore: Vec<String>,
    /// The `luo` binary that serves the simulator (default: this one).
    pub luo: PathBuf,
    /// Text, or one JSON document with every run.
    pub format: luo_schema::output::Format,
}

/// One program as the tool runs it.
#[derive(Clone, Debug)]
pub struct Program {
    /// Short name (the first source's stem or the binary's name), unique in the run.
    pub name: String,
    /// Static build (for the guest).
    pub static_bin: PathBuf,
    /// Dynamic build (for the simulator).
    pub dyn_bin: PathBuf,
    /// Arguments, `{stage}` not yet replaced.
    pub args: Vec<String>,
}

impl Program {
    /// The arguments for `stage`.
    pub fn args_for(&self, stage: u32) -> Vec<String> {
        self.args
            .iter()
            .map(|a| a.replace("{stage}", &stage.to_string()))
            .collect()
    }
}

/// What one program did in one stage.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProgRun {
    /// Stage number (1-based).
    pub stage: u32,
    /// Program name.
    pub name: String,
    /// stdout lines.
    pub stdout: Vec<String>,
    /// stderr lines.
    pub stderr: Vec<String>,
    /// `exit N`, `signal N`, or `not run`.
    pub status: String,
}

/// A whole run on one machine.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunResult {
    /// Every program run, in order.
    pub runs: Vec<ProgRun>,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
    /// Seconds per stage: its programs, then the kexec and the next boot (the kernel) or the
    /// simulated kexec (the simulator).
    pub stage_secs: Vec<f64>,
    /// Seconds from starting QEMU to the first stage's /init (the kernel only).
    pub boot_secs: Option<f64>,
    /// The kernel each stage ran on, as the guest's `uname` gave it: stage, release, version
    /// (the kernel only).
    pub kernels: Vec<(u32, String, String)>,
}

/// The work directory: a fresh temporary one removed on drop, or `--keep DIR`.
struct Work {
    dir: PathBuf,
    remove: bool,
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn work_dir(keep: Option<&Path>) -> Result<Work, VmError> {
    let (dir, remove) = match keep {
        Some(d) => (d.to_path_buf(), false),
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            (
                std::env::temp_dir().join(format!(
                    "luo-vmtest-{}-{:x}",
                    std::process::id(),
                    now & 0xffff_ffff
                )),
                true,
            )
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| {
        VmError(format!(
            "cannot create work directory {}: {e}",
            dir.display()
        ))
    })?;
    Ok(Work { dir, remove })
}

/// Runs `cmd`, failing with its stderr.
pub(crate) fn run_cmd(cmd: &mut Command, what: &str) -> Result<(), VmError> {
    let out = cmd
        .output()
        .map_err(|e| VmError(format!("{what}: cannot run {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(())
}

/// Whether an ELF file asks for a program interpreter (is dynamically linked).
fn elf_is_dynamic(path: &Path) -> Result<bool, VmError> {
    let b =
        std::fs::read(path).map_err(|e| VmError(format!("cannot read {}: {e}", path.display())))?;
    let rd16 = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let rd64 = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    };
    if b.get(..5) != Some(b"\x7fELF\x02") {
        bail!("{} is not a 64-bit ELF program", path.display());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd64(0x20), rd16(0x36), rd16(0x38)) else {
        bail!("{}: truncated ELF header", path.display());
    };
    for i in 0..phnum as usize {
        let off = phoff as usize + i * phentsize as usize;
        // PT_INTERP = 3
        if b.get(off..off + 4) == Some(&3u32.to_le_bytes()[..]) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Compiles or copies every program into `dir/static` and `dir/dyn`.
fn prepare(
    opts: &Options,
    dir: &Path,
    need_static: bool,
    need_dyn: bool,
) -> Result<Vec<Program>, VmError> {
    let sdir = dir.join("static");
    let ddir = dir.join("dyn");
    for d in [&sdir, &ddir] {
        std::fs::create_dir_all(d)
            .map_err(|e| VmError(format!("cannot create {}: {e}", d.display())))?;
    }
    let uapi = opts.root.join("generated/include/uapi");
    let mut progs: Vec<Program> = Vec::new();
    for spec in &opts.programs {
        let mut words = spec.split_whitespace();
        let Some(first) = words.next() else {
            bail!("empty program spec");
        };
        let args: Vec<String> = words.map(str::to_owned).collect();
        let parts: Vec<PathBuf> = first.split(',').map(PathBuf::from).collect();
        let stem = parts[0]
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "prog".into());
        let mut name = stem.clone();
        let mut n = 1;
        while progs.iter().any(|p| p.name == name) {
            n += 1;
            name = format!("{stem}.{n}");
        }
        for p in &parts {
            if !p.is_file() {
                bail!(
                    "program {} not found (give a C source or a binary)",
                    p.display()
                );
            }
        }
        let (sbin, dbin) = (sdir.join(&name), ddir.join(&name));
        if parts[0].extension().is_some_and(|e| e == "c") {
            let mut incs = vec![uapi.clone()];
            if let Some(d) = parts[0].parent() {
                incs.push(if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d.to_path_buf()
                });
            }
            incs.extend(opts.include.iter().cloned());
            let build = |out: &Path, stat: bool| -> Result<(), VmError> {
                let mut c = Command::new("gcc");
                c.args(["-O2", "-Wall", "-D_GNU_SOURCE"]);
                if stat {
                    c.arg("-static");
                }
                for i in &incs {
                    c.arg("-I").arg(i);
                }
                c.arg("-o").arg(out).args(&parts);
                run_cmd(&mut c, &format!("gcc {}", first))
            };
            if need_static {
                build(&sbin, true)?;
            }
            if need_dyn {
                build(&dbin, false)?;
            }
        } else {
            if parts.len() > 1 {
                bail!("{first}: only C sources can be combined with ','");
            }
            let dynamic = elf_is_dynamic(&parts[0])?;
            if need_static && dynamic {
                bail!(
                    "{} is dynamically linked; the guest has no libraries: link it with -static \
                     or give its C source",
                    parts[0].display()
                );
            }
            if need_dyn && !dynamic {
                bail!(
                    "{} is statically linked, so the simulator's preload library cannot reach \
                     it: give a dynamic build or its C source",
                    parts[0].display()
                );
            }
            let copy = |to: &Path| {
                std::fs::copy(&parts[0], to)
                    .map(|_| ())
                    .map_err(|e| VmError(format!("copy {}: {e}", parts[0].display())))
            };
            if need_static {
                copy(&sbin)?;
            }
            if need_dyn {
                copy(&dbin)?;
            }
        }
        progs.push(Program {
            name,
            static_bin: sbin,
            dyn_bin: dbin,
            args,
        });
    }
    if progs.is_empty() {
        bail!("no programs given: `luo vmtest [--sim|--diff] PROG.c...`");
    }
    Ok(progs)
}

fn show(r: &RunResult, title: &str) -> String {
    let mut s = String::new();
    for p in &r.runs {
        let _ = writeln!(s, "== {title} stage {} {}: {}", p.stage, p.name, p.status);
        for l in &p.stdout {
            let _ = writeln!(s, "{l}");
        }
        for l in &p.stderr {
            let _ = writeln!(s, "stderr: {l}");
        }
    }
    if let Some(e) = &r.error {
        let _ = writeln!(s, "== {title}: stopped early: {e}");
    }
    s
}

/// Compares two runs: the differing lines, as text, and their count.
pub fn diff(kernel: &RunResult, sim: &RunResult, ignore: &[String]) -> (String, usize) {
    let keep = |r: &RunResult| {
        let mut r = r.clone();
        for p in &mut r.runs {
            p.stdout
                .retain(|l| !ignore.iter().any(|i| l.contains(i.as_str())));
        }
        r
    };
    let (kernel, sim) = (&keep(kernel), &keep(sim));
    let mut s = String::new();
    let mut count = 0;
    let key = |p: &ProgRun| (p.stage, p.name.clone());
    let mut keys: Vec<(u32, String)> = kernel.runs.iter().map(key).collect();
    for p in &sim.runs {
        if !keys.contains(&key(p)) {
            keys.push(key(p));
        }
    }
    let missing = ProgRun {
        status: "not run".into(),
        ..ProgRun::default()
    };
    for k in keys {
        let a = kernel.runs.iter().find(|p| key(p) == k).unwrap_or(&missing);
        let b = sim.runs.iter().find(|p| key(p) == k).unwrap_or(&missing);
        let mut lines = 0;
        let mut body = String::new();
        if a.status != b.status {
            lines += 1;
            let _ = writeln!(body, "  status: kernel {:?}, sim {:?}", a.status, b.status);
        }
        for i in 0..a.stdout.len().max(b.stdout.len()) {
            let (x, y) = (a.stdout.get(i), b.stdout.get(i));
            if x != y {
                lines += 1;
                let _ = writeln!(
                    body,
                    "  line {}:\n    kernel: {}\n    sim:    {}",
                    i + 1,
                    x.map_or("(none)".into(), |l| format!("{l:?}")),
                    y.map_or("(none)".into(), |l| format!("{l:?}"))
                );
            }
        }
        let n = a.stdout.len().max(b.stdout.len());
        if lines == 0 {
            let _ = writeln!(s, "same  stage {} {}: {n} lines, {}", k.0, k.1, a.status);
        } else {
            let _ = writeln!(s, "DIFF  stage {} {}: {lines} differing\n{body}", k.0, k.1);
            for (t, p) in [("kernel", a), ("sim", b)] {
                for l in &p.stderr {
                    let _ = writeln!(s, "    {t} stderr: {l}");
                }
            }
        }
        count += lines;
    }
    for (t, r) in [("kernel", kernel), ("sim", sim)] {
        if let Some(e) = &r.error {
            count += 1;
            let _ = writeln!(s, "DIFF  the {t} run stopped early: {e}");
        }
    }
    (s, count)
}

/// One `booted:` line per stage: the kernel the guest reported and the image planned for it.
fn booted(setup: &real::Setup, r: &RunResult) -> String {
    let mut s = String::new();
    for ((stage, release, version), img) in r.kernels.iter().zip(setup.stage_images()) {
        let _ = writeln!(
            s,
            "booted: stage {stage} Linux {release} {version} ({})",
            img.path.display()
        );
    }
    s
}

fn timing(r: &RunResult) -> String {
    let stages = r
        .stage_secs
        .iter()
        .map(|t| format!("{t:.2} s"))
        .collect::<Vec<_>>()
        .join(", ");
    match r.boot_secs {
        Some(b) => format!("boot {b:.2} s, stages {stages}"),
        None => format!("stages {stages}"),
    }
}

/// Runs `luo vmtest`; returns whether everything ran and (with `--diff`) agreed.
pub fn run(opts: &Options) -> Result<bool, VmError> {
    if opts.stages == 0 {
        bail!("--stages must be at least 1");
    }
    let work = work_dir(opts.keep.as_deref())?;
    let need_static = opts.mode != Mode::Sim;
    let need_dyn = opts.mode != Mode::Kernel;
    // Check the machine before compiling anything.
    let kernel_setup = if need_static {
        Some(real::Setup::find(opts)?)
    } else {
        None
    };
    let progs = prepare(opts, &work.dir, need_static, need_dyn)?;
    let kernel = match &kernel_setup {
        Some(k) => Some(k.run(opts, &progs, &work.dir)?),
        None => None,
    };
    let simulated = if need_dyn {
        Some(sim::run(opts, &progs, &work.dir)?)
    } else {
        None
    };
    let ok_run = |r: &RunResult| r.error.is_none() && r.runs.iter().all(|p| p.status == "exit 0");
    // With --next-kernel, which image each stage ran on (checked against the image's own
    // version string by the kernel run).
    let booted = match (&kernel_setup, &kernel) {
        (Some(setup), Some(k)) if !opts.next_kernels.is_empty() => booted(setup, k),
        _ => String::new(),
    };
    let mut out = Reporter::stdout(opts.format);
    let shown = match (kernel, simulated) {
        (Some(k), Some(s)) => {
            let (text, n) = diff(&k, &s, &opts.ignore);
            out.text(format!("{text}{booted}"))
                .and_then(|()| {
                    out.line(format_args!(
                        "{n} differing lines ({} program runs; kernel: {}; sim: {})",
                        k.runs.len(),
                        timing(&k),
                        timing(&s)
                    ))
                })
                .and_then(|()| {
                    out.json(&serde_json::json!({
                        "mode": "diff", "ok": n == 0, "differing_lines": n,
                        "kernel": k, "sim": s,
                    }))
                })
                .map(|()| n == 0)
        }
        (Some(r), None) | (None, Some(r)) => {
            let title = if opts.mode == Mode::Kernel {
                "kernel"
            } else {
                "sim"
            };
            out.text(format!("{}{booted}", show(&r, title)))
                .and_then(|()| out.line(format_args!("time: {}", timing(&r))))
                .and_then(|()| {
                    out.json(&serde_json::json!({
                        "mode": title, "ok": ok_run(&r), title: r,
                    }))
                })
                .map(|()| ok_run(&r))
        }
        (None, None) => Ok(false),
    };
    shown.map_err(|e| VmError(format!("writing standard output: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[&str], status: &str) -> RunResult {
        RunResult {
            runs: vec![ProgRun {
                stage: 1,
                name: "p".into(),
                stdout: lines.iter().map(|l| l.to_string()).collect(),
                stderr: Vec::new(),
                status: status.into(),
            }],
            ..RunResult::default()
        }
    }

    #[test]
    fn diff_counts_each_differing_line_status_and_missing_run() {
        let (_, n) = diff(
            &run(&["a", "b"], "exit 0"),
            &run(&["a", "b"], "exit 0"),
            &[],
        );
        assert_eq!(n, 0);
        let (text, n) = diff(
            &run(&["a", "b"], "exit 0"),
            &run(&["a", "c", "d"], "exit 1"),
            &[],
        );
        assert_eq!(n, 3, "{text}");
        assert!(text.contains("line 2:") && text.contains("line 3:") && text.contains("status"));
        let (_, n) = diff(&run(&["a"], "exit 0"), &RunResult::default(), &[]);
        assert_eq!(
            n, 2,
            "a run missing on one side differs in its status and its line"
        );
        let stopped = RunResult {
            error: Some("timed out".into()),
            ..run(&["a"], "exit 0")
        };
        assert_eq!(diff(&stopped, &run(&["a"], "exit 0"), &[]).1, 1);
        let ign = ["pid".to_string()];
        let (_, n) = diff(
            &run(&["pid 1", "x"], "exit 0"),
            &run(&["pid 2", "x"], "exit 0"),
            &ign,
        );
        assert_eq!(n, 0, "ignored lines are left out on both sides");
    }

    #[test]
    fn stage_placeholder_in_arguments() {
        let p = Program {
            name: "x".into(),
            static_bin: PathBuf::new(),
            dyn_bin: PathBuf::new(),
            args: vec!["-s".into(), "{stage}".into()],
        };
        assert_eq!(p.args_for(2), vec!["-s", "2"]);
    }
}
