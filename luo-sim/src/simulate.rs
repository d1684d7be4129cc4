// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `luo simulate`: a live update end to end, across two processes.
//!
//! Stage 1 boots a kernel with a memfd-backed arena, creates sessions with memfds full of
//! known data, preserves them, reboots (serializes) and `execve`s the next binary with the
//! handover. Stage 2 (in the new process) boots from the handover, retrieves every session and
//! file, checks every byte, finishes, and checks that no preserved page is left. With
//! `hops > 1` each later stage preserves fresh data again and `execve`s the next one, so
//! several live updates run in a row. Each phase is printed with its duration.
//!
//! That is the `basic` [`Scenario`]. The `vm` one (module `vm`, [`VmReport`]) hands over a
//! virtual machine's files instead (guest RAM memfd, HugeTLB memfd, KVM VM, guest_memfds,
//! iommufd, vfio-pci devices) through the same two stages, plan and reporter.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use luo_abi::Errno;

use crate::progress::{self, Progress};

mod stage2;
pub(crate) mod vm;

/// How the HugeTLB pools cross (`--hugetlb-form`), re-exported for front ends.
pub use luo_handlers::hugetlb::Form as HugetlbForm;
pub use stage2::*;
pub use vm::VmReport;

use HugetlbForm as Form;

use luo_core::{BackingKind, BootOptions, ImageError, Kernel, KernelVersion, LuoFormat};

use crate::size::Human;

/// Environment variable carrying the plan and stage-1 timings to stage 2.
pub const PLAN_ENV: &str = "LUO_SIM_PLAN";

/// Environment variable carrying the kernel each stage plays (`6.19,7.3,next`).
pub const KERNELS_ENV: &str = "LUO_SIM_KERNELS";

/// Environment variable carrying the `CLOCK_MONOTONIC` time (ns) of the `execve`, so the next
/// stage measures how long the exec took (the clock is system-wide and survives `execve`).
pub const EXEC_AT_ENV: &str = "LUO_SIM_EXEC_AT";

fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// Which files cross the live update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scenario {
    /// Sessions of memfds full of known data.
    #[default]
    Basic,
    /// One VM: a sealed guest-RAM memfd, a HugeTLB memfd, a KVM VM, its guest_memfds, an
    /// iommufd mapping the RAM and two vfio-pci devices behind a bridge (kernel `next`).
    Vm,
}

impl Scenario {
    /// The name used by `--scenario` and in the plan.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Basic => "basic",
            Scenario::Vm => "vm",
        }
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "basic" => Ok(Scenario::Basic),
            "vm" => Ok(Scenario::Vm),
            _ => Err(format!("unknown scenario `{s}` (basic, vm)")),
        }
    }
}

/// The name of a HugeTLB form, as `--hugetlb-form` and the plan spell it.
pub fn hugetlb_form_name(form: Form) -> &'static str {
    match form {
        Form::Flb => "flb",
        Form::Subsystem => "subsystem",
    }
}

/// Parses `flb` or `subsystem` (`--hugetlb-form`).
pub fn parse_hugetlb_form(s: &str) -> Result<Form, String> {
    match s {
        "flb" => Ok(Form::Flb),
        "subsystem" => Ok(Form::Subsystem),
        _ => Err(format!("unknown HugeTLB form `{s}` (flb, subsystem)")),
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Options {
    /// Number of sessions.
    pub sessions: u32,
    /// memfds per session.
    pub files: u32,
    /// Bytes per memfd.
    pub size: u64,
    /// Seed of the data pattern.
    pub seed: u64,
    /// The binary to `execve` for stage 2 (default: this one).
    pub next: Option<PathBuf>,
    /// Arguments that make `next` run stage 2 (for `luo-sim`: `["stage2"]`).
    pub stage2_args: Vec<OsString>,
    /// JSON Lines (one object per phase, then the report) instead of text.
    pub json: bool,
    /// Save the handover image here before `execve` (for `luo inspect`).
    pub save_image: Option<PathBuf>,
    /// Number of live updates in a row (each one a new process).
    pub hops: u32,
    /// The kernel each stage plays, stage 1 first (`--from`, then `--to`); stages past the
    /// end of the list play its last kernel. Empty: 7.3 throughout (`next` for
    /// [`Scenario::Vm`], whose handlers only `next` has).
    pub kernels: Vec<KernelVersion>,
    /// Which files cross.
    pub scenario: Scenario,
    /// How the HugeTLB pools cross ([`Scenario::Vm`]): LUO v4's subsystem or the RFC's FLB.
    pub hugetlb_form: Form,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sessions: 4,
            files: 4,
            size: 1 << 20,
            seed: 0x5eed,
            next: None,
            stage2_args: vec!["stage2".into()],
            json: false,
            save_image: None,
            hops: 1,
            kernels: Vec::new(),
            scenario: Scenario::Basic,
            hugetlb_form: Form::Subsystem,
        }
    }
}

/// Why a simulation failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A kernel operation failed.
    #[error("{what}: {errno}")]
    Op {
        /// What was being done.
        what: String,
        /// The error.
        errno: Errno,
    },
    /// The handover could not be booted.
    #[error("boot from the handover: {0}")]
    Boot(#[from] ImageError),
    /// Kernel `.0` refused the handover at boot. Upstream `panic()`s here
    /// (`luo_restore_fail`); the model stops cleanly.
    #[error("kernel luo:{0} refused the handover at boot (upstream: panic): {1}")]
    BootAs(KernelVersion, ImageError),
    /// A byte differed after the live update.
    #[error("session {session} file {file}: byte {offset} is {got:#04x}, expected {want:#04x}")]
    Mismatch {
        /// Session index.
        session: u32,
        /// File index.
        file: u32,
        /// Offset in the file.
        offset: u64,
        /// Read.
        got: u8,
        /// Expected.
        want: u8,
    },
    /// Stage 2 ran without a handover or a plan.
    #[error("stage 2 needs {0} (run `simulate` instead)")]
    NoHandover(&'static str),
    /// The plan stage 2 inherited is not one stage 1 writes.
    #[error("bad {PLAN_ENV}: {0}")]
    BadPlan(String),
    /// Options that do not go together.
    #[error("{0}")]
    Usage(String),
    /// `--next` names a program that does not run stage 2: refused before anything is frozen.
    #[error(
        "--next {}: {why}; nothing was preserved or frozen (give a `luo` or `luo-sim` binary, \
         or leave out --next to kexec into this one)",
        next.display()
    )]
    NotNext {
        /// The program.
        next: PathBuf,
        /// What it did instead.
        why: String,
    },
    /// A file came back different ([`Scenario::Vm`]): what differed.
    #[error("after the live update: {0}")]
    Check(String),
    /// Something was left behind.
    #[error("{0} preserved pages left after FINISH")]
    Leak(u64),
    /// `--save-image` could not be written.
    #[error("cannot save the handover image to {}: {error}; check that its directory exists and is writable", path.display())]
    SaveImage {
        /// Where.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Writing the report failed.
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
}

fn op<T>(what: impl FnOnce() -> String, r: Result<T, Errno>) -> Result<T, SimError> {
    r.map_err(|errno| SimError::Op {
        what: what(),
        errno,
    })
}

/// The byte at `off` of file `f` of session `s`.
pub fn pattern_byte(seed: u64, s: u32, f: u32, off: u64) -> u8 {
    let mut x = seed ^ (u64::from(s) << 40) ^ (u64::from(f) << 20) ^ (off / 8);
    x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    (x >> ((off % 8) * 8)) as u8
}

fn fill(seed: u64, s: u32, f: u32, start: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, s, f, start + i as u64);
    }
}

/// Prints the phases as they end: text lines, or JSON Lines (`"event": "phase"`, then one
/// `"event": "report"`), the convention of every `luo` command's `--format json`.
struct Reporter<'a> {
    out: &'a mut dyn Write,
    json: bool,
    /// Stage number: 1, then one more per live update (`--hops` has no upper bound here).
    stage: u32,
    /// Width of the phase-name column in text.
    width: usize,
    /// Whether long phases draw a progress bar.
    progress: bool,
}

impl Reporter<'_> {
    fn phase(&mut self, name: &str, took: Duration, detail: &str) -> std::io::Result<()> {
        if self.json {
            let v = serde_json::json!({
                "event": "phase", "stage": self.stage, "phase": name,
                "micros": took.as_micros() as u64, "detail": detail,
            });
            writeln!(self.out, "{v}")
        } else {
            writeln!(
                self.out,
                "[stage {}] {:<w$} {:>10.3} ms  {}",
                self.stage,
                name,
                took.as_secs_f64() * 1e3,
                detail,
                w = self.width
            )
        }
    }

    /// A bar over `total` bytes for a long phase (see [`progress`]).
    fn bytes(&self, what: &str, total: u64) -> Progress {
        Progress::bytes(self.progress, what, total)
    }

    /// The last stage's findings: a summary for people, or `{"event": "report", ...}`.
    fn report(&mut self, r: &Report) -> std::io::Result<()> {
        if self.json {
            let v = serde_json::json!({ "event": "report", "report": r });
            return writeln!(self.out, "{v}");
        }
        writeln!(
            self.out,
            "live update verified: liveupdate_num {}, {} sessions, {} files, {} checked, {} \
             preserved pages left",
            r.liveupdate_num,
            r.sessions,
            r.files,
            exact_bytes(r.verified_bytes),
            r.preserved_pages_left
        )?;
        if let Some(vm) = &r.vm {
            vm.write_text(self.out)?;
        }
        Ok(())
    }
}

/// `4096 bytes`, or `16777216 bytes (16M)` once the unit says more than the digits.
fn exact_bytes(n: u64) -> String {
    let human = Human(n).to_string();
    if human == n.to_string() {
        format!("{n} bytes")
    } else {
        format!("{n} bytes ({human})")
    }
}

fn timed<T>(f: impl FnOnce() -> Result<T, SimError>) -> Result<(T, Duration), SimError> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed()))
}

fn session_name(s: u32) -> String {
    format!("sim-session-{s}")
}

fn token(s: u32, f: u32) -> u64 {
    (u64::from(s) << 32) | u64::from(f)
}

/// The data seed of hop `hop` (the data stage `hop + 1` writes).
fn hop_seed(seed: u64, hop: u32) -> u64 {
    seed.wrapping_add(u64::from(hop).wrapping_mul(0x1000_0001))
}

/// What every stage needs to know, passed to the next one in [`PLAN_ENV`].
#[derive(Clone, Debug)]
struct Plan {
    sessions: u32,
    files: u32,
    size: u64,
    seed: u64,
    json: bool,
    hops: u32,
    /// Live updates done so far (0 in stage 1).
    hop: u32,
    next: PathBuf,
    stage2_args: Vec<OsString>,
    save_image: Option<PathBuf>,
    kernels: Vec<KernelVersion>,
    scenario: Scenario,
    hugetlb_form: Form,
}

impl Plan {
    fn env(&self) -> String {
        format!(
            "{} {} {} {} {} {} {} {} {}",
            self.sessions,
            self.files,
            self.size,
            self.seed,
            u8::from(self.json),
            self.hops,
            self.hop,
            self.scenario.name(),
            hugetlb_form_name(self.hugetlb_form)
        )
    }

    /// Refuses what the scenario cannot run, in stage 1 and again on the plan stage 2
    /// inherited.
    fn check(&self) -> Result<(), SimError> {
        match self.scenario {
            Scenario::Basic => {}
            Scenario::Vm => vm::check(self)?,
        }
        self.check_memory(host_available_memory())
    }

    /// The memfd data the run writes (and keeps across the kexec) must fit in the host's
    /// available memory (`available`, when known): a size beyond it would fill memory until
    /// the run is killed. Refused before anything is created.
    fn check_memory(&self, available: Option<u64>) -> Result<(), SimError> {
        let (what, total) = match self.scenario {
            Scenario::Basic => (
                format!(
                    "--size {} x {} session(s) x {} file(s)",
                    self.size, self.sessions, self.files
                ),
                u64::from(self.sessions)
                    .checked_mul(u64::from(self.files))
                    .and_then(|n| n.checked_mul(self.size)),
            ),
            Scenario::Vm => (
                format!("--size {} of guest RAM", self.size),
                Some(self.size),
            ),
        };
        match (total, available) {
            (Some(t), Some(a)) if t <= a => Ok(()),
            (Some(_), None) => Ok(()),
            (t, a) => Err(SimError::Usage(format!(
                "{what} is {} of memfd data, more than {}; give a smaller --size{}",
                t.map_or("more than 2^64 bytes".to_owned(), |t| format!("{t} bytes")),
                a.map_or("any machine has".to_owned(), |a| format!(
                    "this machine's available memory ({a} bytes, MemAvailable in /proc/meminfo)"
                )),
                match self.scenario {
                    Scenario::Basic => " or fewer --sessions/--files",
                    Scenario::Vm => "",
                }
            ))),
        }
    }

    fn reporter<'a>(&self, out: &'a mut dyn Write, stage: u32) -> Reporter<'a> {
        Reporter {
            out,
            json: self.json,
            stage,
            progress: progress::wanted(self.json),
            width: match self.scenario {
                Scenario::Basic => 10,
                Scenario::Vm => vm::PHASE_WIDTH,
            },
        }
    }

    /// The kernel stage `hop + 1` plays.
    fn kernel(&self, hop: u32) -> KernelVersion {
        self.kernels
            .get(hop as usize)
            .or(self.kernels.last())
            .copied()
            .unwrap_or_default()
    }

    fn kernels_env(&self) -> String {
        self.kernels
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn from_env() -> Result<Plan, SimError> {
        let plan = std::env::var(PLAN_ENV).map_err(|_| SimError::NoHandover(PLAN_ENV))?;
        let words: Vec<&str> = plan.split_ascii_whitespace().collect();
        // Seven numbers, then the scenario and the HugeTLB form (absent: basic, as plans
        // written before scenarios existed).
        let (nums, scenario, form) = match &words[..] {
            [nums @ .., scenario, form] if nums.len() == 7 => (
                nums,
                scenario.parse().map_err(SimError::BadPlan)?,
                parse_hugetlb_form(form).map_err(SimError::BadPlan)?,
            ),
            nums => (nums, Scenario::Basic, Form::Subsystem),
        };
        let p: Vec<u64> = nums
            .iter()
            .map(|w| w.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| SimError::BadPlan(format!("`{plan}`: not a number")))?;
        let [sessions, files, size, seed, json, hops, hop] = p[..] else {
            return Err(SimError::BadPlan(format!(
                "`{plan}`: 7 numbers expected, then the scenario and the HugeTLB form"
            )));
        };
        let small =
            |v: u64| u32::try_from(v).map_err(|_| SimError::BadPlan(format!("{v} is too large")));
        let plan = Plan {
            sessions: small(sessions)?,
            files: small(files)?,
            size,
            seed,
            json: json != 0,
            hops: small(hops)?,
            hop: small(hop)?,
            next: std::env::current_exe()?,
            stage2_args: std::env::args_os().skip(1).collect(),
            save_image: None,
            kernels: std::env::var(KERNELS_ENV)
                .unwrap_or_default()
                .split(',')
                .filter(|w| !w.is_empty())
                .map(|w| w.parse().map_err(|_| SimError::NoHandover(KERNELS_ENV)))
                .collect::<Result<_, _>>()?,
            scenario,
            hugetlb_form: form,
        };
        plan.check()?;
        Ok(plan)
    }
}

fn populate(k: &Kernel, p: &Plan, rep: &mut Reporter<'_>) -> Result<(), SimError> {
    let seed = hop_seed(p.seed, p.hop);
    let bytes = u64::from(p.sessions)
        .saturating_mul(u64::from(p.files))
        .saturating_mul(p.size);
    let mut bar = rep.bytes("populate", bytes);
    let (sessions, t) = timed(|| {
        let dev = op(|| "open /dev/liveupdate".into(), k.open_dev())?;
        let mut sessions = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        for s in 0..p.sessions {
            let sfd = op(
                || format!("create session {s}"),
                k.create_session(dev, &session_name(s)),
            )?;
            let mut files = Vec::new();
            for f in 0..p.files {
                let m = op(|| "memfd_create".into(), k.memfd_create("sim"))?;
                let mut off = 0;
                while off < p.size {
                    let n = (p.size - off).min(buf.len() as u64) as usize;
                    fill(seed, s, f, off, &mut buf[..n]);
                    op(|| "write".into(), k.pwrite(m, off, &buf[..n]))?;
                    bar.inc(n as u64);
                    off += n as u64;
                }
                files.push(m);
            }
            sessions.push((sfd, files));
        }
        op(|| "close /dev/liveupdate".into(), k.close(dev))?;
        Ok(sessions)
    })?;
    bar.finish();
    rep.phase(
        "populate",
        t,
        &format!(
            "{} sessions x {} memfds x {} = {}",
            p.sessions,
            p.files,
            Human(p.size),
            Human(bytes)
        ),
    )?;
    let (_, t) = timed(|| {
        for (s, (sfd, files)) in sessions.iter().enumerate() {
            for (f, &m) in files.iter().enumerate() {
                op(
                    || format!("preserve session {s} file {f}"),
                    k.preserve_fd(*sfd, m, token(s as u32, f as u32)),
                )?;
                op(|| "close".into(), k.close(m))?;
            }
        }
        Ok(())
    })?;
    let st = k.stats();
    rep.phase(
        "preserve",
        t,
        &format!("{} pages preserved", st.kho.preserved_pages),
    )?;
    Ok(())
}

/// Reboots `k` and `execve`s the next stage. Returns only on failure.
fn reboot_and_exec(k: Kernel, p: &Plan, rep: &mut Reporter<'_>) -> Result<(), SimError> {
    let kernel = k.version();
    let (h, t) = timed(|| op(|| "reboot".into(), k.kexec()))?;
    let format = match kernel.luo_writes() {
        LuoFormat::V1 => "luo-v1 FDT, luo-session-v2",
        LuoFormat::V1Flb => "luo-v1 FDT, luo-session-v2, luo-flb-v1",
        LuoFormat::V5 => "luo-v5",
        LuoFormat::Next => "feature-negotiated luo_ser",
    };
    let memfd = match kernel.memfd_writes() {
        "memfd" => "memfd (features)",
        c => c,
    };
    rep.phase(
        "reboot",
        t,
        &format!(
            "kernel luo:{kernel} serialized ({format}; {memfd}); {} memfd regions cross",
            h.regions()
        ),
    )?;
    drop(k);
    if let Some(path) = &p.save_image {
        let (_, t) = timed(|| {
            luo_core::image::Image::from_handover(&h)?
                .save(path)
                .map_err(|error| SimError::SaveImage {
                    path: path.clone(),
                    error,
                })
        })?;
        rep.phase("image", t, &format!("saved to {}", path.display()))?;
    }
    // The exec is timed by the next stage, from the clock reading passed to it.
    rep.out.flush()?;
    let next = Plan {
        hop: p.hop + 1,
        ..p.clone()
    };
    let errno = h.exec(
        &p.next,
        &p.stage2_args,
        &[
            (PLAN_ENV.into(), next.env()),
            (KERNELS_ENV.into(), next.kernels_env()),
            (EXEC_AT_ENV.into(), monotonic_ns().to_string()),
        ],
    );
    Err(SimError::Op {
        what: format!("execve {}", p.next.display()),
        errno,
    })
}

/// Stage 1: preserve, reboot, `execve` stage 2. Returns only on failure.
pub fn stage1(opts: &Options, out: &mut dyn Write) -> Result<(), SimError> {
    let plan = Plan {
        sessions: opts.sessions,
        files: opts.files,
        size: opts.size,
        seed: opts.seed,
        json: opts.json,
        hops: opts.hops,
        hop: 0,
        next: match &opts.next {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        },
        stage2_args: opts.stage2_args.clone(),
        save_image: opts.save_image.clone(),
        kernels: match opts.scenario {
            Scenario::Vm if opts.kernels.is_empty() => vec![KernelVersion::Next],
            _ => opts.kernels.clone(),
        },
        scenario: opts.scenario,
        hugetlb_form: opts.hugetlb_form,
    };
    if plan.hops == 0 {
        return Err(SimError::Usage(
            "--hops must be at least 1: a simulation is one or more live updates".into(),
        ));
    }
    plan.check()?;
    // Another binary as the next stage must show it runs stage 2 before anything is
    // preserved: `--next /bin/true` would exit 0 having verified nothing.
    if let Some(next) = &opts.next {
        luo_core::exec::probe(next, &plan.stage2_args).map_err(|why| SimError::NotNext {
            next: next.clone(),
            why,
        })?;
    }
    let mut rep = plan.reporter(out, 1);
    let boot = BootOptions {
        backing: BackingKind::Memfd,
        version: plan.kernel(0),
        ..crate::machine::default_options()
    };
    let (k, t) = timed(|| Ok(Kernel::boot(&boot, None)?))?;
    rep.phase(
        "boot",
        t,
        // `luo:` names the view: this tree's build of the kernel, as `luo schema` does.
        &format!("fresh kernel luo:{}, memfd-backed arena", boot.version),
    )?;
    match plan.scenario {
        Scenario::Basic => populate(&k, &plan, &mut rep)?,
        Scenario::Vm => vm::populate(&k, &plan, &mut rep)?,
    }
    reboot_and_exec(k, &plan, &mut rep)
}

/// The host's available memory in bytes (`MemAvailable` of /proc/meminfo), if readable.
fn host_available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}
