// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `luo`: the command-line front end of the luo framework.
//!
//! `luo gen` turns `spec/` into `generated/` (C headers, Rust ABI types,
//! layout snapshots); `luo gen --check` fails when the committed files are
//! stale; `luo layout` shows a struct pahole-style. The spec-side commands
//! live in `luo_schema::commands` (also built as the standalone `luo-gen`), so
//! generating never depends on the generated crate.
//!
//! Every command takes `--format text|json` (see `luo_schema::output` for the
//! convention); `luo completions SHELL` and `luo man` are generated from the
//! same argument definitions.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use luo_schema::commands;
use luo_schema::output::{Format, Reporter};

mod boot;
mod pipe;
mod vmtest;

#[derive(Parser)]
#[command(
    name = "luo",
    version,
    about = "Declared, generated, checked Live Update Orchestrator ABIs"
)]
struct Cli {
    /// Repository root (holds `spec/` and `generated/`) [default: the current directory or
    /// the first directory above it holding `spec/kernels/`].
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Output: `text` for people, `json` for tools (one JSON document; JSON Lines, one object
    /// per line, for `simulate`).
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    /// For people.
    Text,
    /// For tools: one JSON document, or JSON Lines for a stream.
    Json,
}

impl From<OutputFormat> for Format {
    fn from(f: OutputFormat) -> Format {
        match f {
            OutputFormat::Text => Format::Text,
            OutputFormat::Json => Format::Json,
        }
    }
}

/// `luo layout --arch`: the targets of the layout engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Arch {
    /// x86-64, 4 KiB pages.
    #[value(name = "x86_64")]
    X86_64,
    /// 32-bit x86 (the uAPI's compat ABI).
    #[value(name = "i386")]
    I386,
    /// arm64, 4 KiB pages.
    #[value(name = "arm64")]
    Arm64,
    /// arm64, 16 KiB pages.
    #[value(name = "arm64-16k")]
    Arm64_16k,
    /// arm64, 64 KiB pages.
    #[value(name = "arm64-64k")]
    Arm64_64k,
}

impl Arch {
    /// The name the layout engine knows it by.
    fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::I386 => "i386",
            Arch::Arm64 => "arm64",
            Arch::Arm64_16k => "arm64-16k",
            Arch::Arm64_64k => "arm64-64k",
        }
    }
}

/// `--size 1G`: a byte count with an optional binary unit.
fn parse_size(s: &str) -> Result<u64, String> {
    luo_sim::size::parse(s).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum Command {
    /// Write `generated/` from `spec/` and list what changed.
    Gen {
        /// Write nothing; exit 1 and list the files that are stale.
        #[arg(long)]
        check: bool,
        /// Also print notes (PAGE_SIZE or architecture dependent layouts).
        #[arg(long, short)]
        verbose: bool,
    },
    /// A live update end to end on the model: sessions and memfds with data,
    /// freeze and serialize, kexec into a new process (`execve`, the memory
    /// inherited), retrieve and verify every byte, finish; each phase timed.
    /// `--scenario vm`: one VM's memfd, HugeTLB memfd, KVM VM, guest_memfds,
    /// iommufd and vfio-pci devices instead, every file verified after the kexec.
    Simulate {
        /// What crosses.
        #[arg(long, value_enum, default_value_t = ScenarioArg::Basic)]
        scenario: ScenarioArg,
        /// How the HugeTLB pools cross in the vm scenario.
        #[arg(long, value_enum, default_value_t = HugetlbFormArg::Subsystem)]
        hugetlb_form: HugetlbFormArg,
        /// Sessions to create [default: 4] (basic scenario only: vm hands over one session).
        #[arg(long)]
        sessions: Option<u32>,
        /// memfds per session [default: 4] (basic scenario only).
        #[arg(long)]
        files: Option<u32>,
        /// Bytes per memfd (vm: of guest RAM, a multiple of 4096): `4096`, `64K`, `512M`, `1G`.
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        size: u64,
        /// Seed of the data pattern.
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
        /// Live updates in a row, each into a new process (at least 1).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        hops: u32,
        /// Binary to kexec into (default: this one; another build plays another kernel).
        #[arg(long)]
        next: Option<PathBuf>,
        /// Save the handover image here before the kexec (for `luo inspect`).
        #[arg(long)]
        save_image: Option<PathBuf>,
        /// Same as `--format json`.
        #[arg(long, hide = true)]
        json: bool,
        /// Kernel the first stage plays [default: 7.3; vm: next, the only kernel it runs on].
        #[arg(long, value_enum)]
        from: Option<KernelArg>,
        /// Kernel(s) the later stages play, in order (`--to 7.3 --to next`; the last repeats).
        #[arg(long, value_enum)]
        to: Vec<KernelArg>,
        /// Internal: the second stage, run by the first through execve.
        #[arg(long, hide = true)]
        stage2: bool,
    },
    /// The simulated /dev/liveupdate: run unmodified programs against the core.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Decode a handover image (sessions, files, FLBs, preserved ranges).
    Inspect {
        /// Image saved by `luo simulate --save-image`.
        image: PathBuf,
        /// Same as `--format json`.
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Boot a kernel from a handover image and retrieve every session and file it holds, as
    /// userspace would after a live update (the boot path; `inspect` runs the decoder).
    /// Exit 0 all retrieved, 1 some not, 2 the image is unreadable or the boot refused.
    Boot {
        /// Image saved by `luo simulate --save-image`.
        image: PathBuf,
        /// Kernel that boots (next reads every format).
        #[arg(long, value_enum, default_value_t = KernelArg::Next)]
        kernel: KernelArg,
    },
    /// Run C programs as stages across live updates on the real kernel (QEMU, TCG: each stage
    /// one boot, entered by kexec_file_load + reboot(LINUX_REBOOT_CMD_KEXEC)), under the
    /// simulator (`--sim`), or on both and compare every output line (`--diff`).
    /// PROG: `SOURCE.c[,MORE.c] [ARGS]` (compiled here) or `BINARY [ARGS]`; `{stage}` in ARGS
    /// and $LUO_VMTEST_STAGE give the stage. Exit 0 when every program exited 0 (with `--diff`:
    /// when no line differs), 1 otherwise, 2 when the machine could not be set up.
    Vmtest {
        /// Kernel image [default: ../shared/realkernel/bzImage-7.2.13 beside --root, else
        /// target/realkernel/bzImage-7.2 as tests/kernel/build.sh writes it].
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// Kernel image the stages after the first boot into (repeatable: the first one is
        /// kexec'd for stage 2, the second for stage 3, and so on; the last one given serves every
        /// later stage), so a live update crosses two different kernels [default: --kernel].
        /// Every stage checks it booted the image meant for it.
        #[arg(long, value_name = "PATH", conflicts_with = "sim")]
        next_kernel: Vec<PathBuf>,
        /// Only the simulator (no QEMU needed).
        #[arg(long, conflicts_with = "diff")]
        sim: bool,
        /// Both, compared line by line.
        #[arg(long)]
        diff: bool,
        /// Stages: boots each program runs in (kexecs = stages - 1).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
        stages: u32,
        /// Extra include directory for compiling C sources.
        #[arg(short = 'I', long = "include")]
        include: Vec<PathBuf>,
        /// Seconds the QEMU run may take (under --sim: each program).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Keep the work files (initramfs, binaries, console and results logs) in this directory.
        #[arg(long)]
        keep: Option<PathBuf>,
        /// With --diff: leave out stdout lines containing this text (repeatable), e.g. lines
        /// that print a pid.
        #[arg(long)]
        ignore: Vec<String>,
        /// The programs.
        #[arg(required = true)]
        programs: Vec<String>,
    },
    /// Compare ABI snapshots between kernels: diff, matrix, check, freeze.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Show a struct's layout: offsets, sizes, holes (like pahole).
    Layout {
        /// Struct name.
        name: String,
        /// Target.
        #[arg(long, value_enum, default_value_t = Arch::X86_64)]
        arch: Arch,
        /// Which definition, when versions differ: `component/version`
        /// (default: the version the default kernel writes).
        #[arg(long)]
        version: Option<String>,
    },
    /// Print a shell completion script (bash: `source <(luo completions bash)`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (`luo man | man -l -`), or write one page per command into a
    /// directory (`luo man --dir target/man`).
    Man {
        /// Write `luo.1`, `luo-simulate.1`, ... here instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `--from`, `--to`: the kernels the model plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KernelArg {
    /// Linux 6.19: the luo-v1 FDT, memfd-v1.
    #[value(name = "6.19")]
    V6_19,
    /// Linux 7.0: 6.19 plus FLBs.
    #[value(name = "7.0")]
    V7_0,
    /// Linux 7.2: luo-v5, memfd-v2, reading only those (the real kernel `luo vmtest` runs).
    #[value(name = "7.2")]
    V7_2,
    /// Linux 7.3: luo-v5, memfd-v2.
    #[value(name = "7.3")]
    V7_3,
    /// The mm tree: feature-negotiated formats.
    #[value(name = "next")]
    Next,
}

impl From<KernelArg> for luo_core::KernelVersion {
    fn from(k: KernelArg) -> Self {
        match k {
            KernelArg::V6_19 => Self::V6_19,
            KernelArg::V7_0 => Self::V7_0,
            KernelArg::V7_2 => Self::V7_2,
            KernelArg::V7_3 => Self::V7_3,
            KernelArg::Next => Self::Next,
        }
    }
}

/// `--scenario`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ScenarioArg {
    /// Sessions of memfds full of known data.
    Basic,
    /// One VM's files (guest RAM memfd, HugeTLB memfd, KVM VM, guest_memfds, iommufd,
    /// vfio-pci), kernel next.
    Vm,
}

/// `--hugetlb-form`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum HugetlbFormArg {
    /// The seed's subsystem.
    Subsystem,
    /// Upstream's RFC: an FLB.
    Flb,
}

#[derive(Subcommand)]
enum SimCommand {
    /// Run the daemon: one simulated machine on a Unix socket
    /// ($LUO_SIM_SOCKET, else $XDG_RUNTIME_DIR/luo-sim.sock, else the temp dir).
    Serve {
        /// Socket path.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Do not log each uAPI call.
        #[arg(long)]
        quiet: bool,
    },
    /// Live-update the daemon's machine: freeze, serialize, drop every session
    /// connection and re-exec (this binary, or `--into` another build).
    Kexec {
        /// Socket path.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Binary to boot into.
        #[arg(long)]
        into: Option<PathBuf>,
    },
    /// Print the path of the LD_PRELOAD library.
    Preload,
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// List every change between two snapshots and classify it.
    /// OLD and NEW: a kernel as this tree builds it (`6.19`, `luo:7.3`, `current`),
    /// a released kernel as upstream froze it (`upstream:7.3`, also `released:7.3`),
    /// `git:<rev>[:<kernel>]`, a snapshot directory or a `.json` file.
    /// Exit 0 compatible, 1 breaking, 2 usage or input error.
    Diff {
        /// The kernel (or snapshot) updated from.
        old: String,
        /// The kernel (or snapshot) updated to.
        new: String,
    },
    /// Which kernel can live-update into which, per component.
    Matrix {
        /// `luo` (this tree's build of every kernel, as diff, check-update and simulate)
        /// or `upstream` (the released kernels' frozen snapshots).
        #[arg(long, default_value = "luo")]
        view: String,
        /// Also write an HTML page (legend, blocking components and rules in every red cell,
        /// per-component rows, date and tree).
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Fail on an unversioned break against the released kernels' frozen snapshots.
    Check,
    /// Write a kernel's `.liveupdate_features` ABI table (raw bytes; `--format json` lists its
    /// entries instead).
    Table {
        /// Kernel name.
        kernel: String,
        /// Output file (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// From two binaries (or raw tables) alone: can OLD live-update into NEW?
    /// Exit 0 yes, 1 no, 2 unreadable input.
    CheckUpdate {
        /// Binary (or table) of the running kernel.
        old: PathBuf,
        /// Binary (or table) of the kernel to kexec into.
        new: PathBuf,
        /// The kernel OLD plays, for a binary that plays several (`.luo_kernels`).
        #[arg(long)]
        old_kernel: Option<String>,
        /// The kernel NEW plays.
        #[arg(long)]
        new_kernel: Option<String>,
    },
    /// Freeze a released kernel's snapshots under schema/released/ (once).
    Freeze {
        /// Kernel name.
        kernel: String,
    },
}

/// The ABI table of the kernel this binary plays (the default kernel of the
/// spec it was built from), where `luo schema check-update` finds it.
#[used]
#[unsafe(link_section = ".liveupdate_features")]
static LIVEUPDATE_FEATURES: [u8; luo_generated::abi_table::DEFAULT.len()] =
    luo_generated::abi_table::DEFAULT;

/// The tables of every kernel this binary can play (`luo simulate --from/--to`).
#[used]
#[unsafe(link_section = ".luo_kernels")]
static LUO_KERNELS: [u8; luo_generated::abi_table::ALL_KERNELS.len()] =
    luo_generated::abi_table::ALL_KERNELS;

/// Prints a usage error the way clap does (exit 2).
fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Sim(SimCommand::Serve { .. })) {
        pipe::end_quietly_on_closed_stdout();
    }
    let format = Format::from(cli.format);
    // The commands that read the spec need the repository; the others do not look for it.
    let root = || {
        luo_spec::root::find(cli.root.as_deref()).map_err(|e| {
            eprintln!("luo: {e}");
            ExitCode::from(2)
        })
    };
    match cli.command {
        Command::Gen { check, verbose } => match root() {
            Ok(r) => commands::gen_command(&r, check, verbose, format),
            Err(code) => code,
        },
        Command::Schema(cmd) => match root() {
            Ok(r) => schema(&r, cmd, format),
            Err(code) => code,
        },
        Command::Simulate {
            scenario,
            hugetlb_form,
            sessions,
            files,
            size,
            seed,
            hops,
            next,
            save_image,
            json,
            from,
            to,
            stage2,
        } => {
            use luo_sim::simulate::{HugetlbForm, Scenario};
            let scenario = match scenario {
                ScenarioArg::Basic => Scenario::Basic,
                ScenarioArg::Vm => Scenario::Vm,
            };
            if scenario == Scenario::Vm && (sessions.is_some() || files.is_some()) {
                return usage(
                    "--sessions and --files shape the basic scenario; --scenario vm hands over \
                     one VM's files in one session (size its guest RAM with --size)",
                );
            }
            let from = from.map_or(
                match scenario {
                    Scenario::Basic => luo_core::KernelVersion::default(),
                    Scenario::Vm => luo_core::KernelVersion::Next,
                },
                Into::into,
            );
            let defaults = luo_sim::simulate::Options::default();
            let opts = luo_sim::simulate::Options {
                sessions: sessions.unwrap_or(defaults.sessions),
                files: files.unwrap_or(defaults.files),
                size,
                seed,
                hops,
                next,
                save_image,
                json: json || format == Format::Json,
                stage2_args: vec!["simulate".into(), "--stage2".into()],
                kernels: std::iter::once(from)
                    .chain(to.into_iter().map(Into::into))
                    .collect(),
                scenario,
                hugetlb_form: match hugetlb_form {
                    HugetlbFormArg::Subsystem => HugetlbForm::Subsystem,
                    HugetlbFormArg::Flb => HugetlbForm::Flb,
                },
            };
            simulate(&opts, stage2)
        }
        Command::Inspect { image, json } => {
            inspect(&image, if json { Format::Json } else { format })
        }
        Command::Boot { image, kernel } => boot::run(&image, kernel.into(), format),
        Command::Sim(cmd) => sim(cmd, format),
        Command::Vmtest {
            kernel,
            next_kernel,
            sim,
            diff,
            stages,
            include,
            timeout,
            keep,
            ignore,
            programs,
        } => {
            let mode = match (sim, diff) {
                (_, true) => vmtest::Mode::Diff,
                (true, false) => vmtest::Mode::Sim,
                _ => vmtest::Mode::Kernel,
            };
            let opts = vmtest::Options {
                // Programs and includes are paths of their own; the repository only supplies
                // the default kernel image and headers, so outside one this is the cwd.
                root: luo_spec::root::find(cli.root.as_deref())
                    .unwrap_or_else(|_| cli.root.clone().unwrap_or_else(|| ".".into())),
                kernel,
                next_kernels: next_kernel,
                mode,
                stages,
                programs,
                include,
                timeout,
                keep,
                ignore,
                luo: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("luo")),
                format,
            };
            match vmtest::run(&opts) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("luo vmtest: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Layout {
            name,
            arch,
            version,
        } => match root() {
            Ok(r) => commands::layout_command(&r, &name, arch.name(), version.as_deref(), format),
            Err(code) => code,
        },
        Command::Completions { shell } => {
            if format == Format::Json {
                return usage(
                    "`luo completions` prints a shell script; --format json does not apply",
                );
            }
            clap_complete::generate(shell, &mut Cli::command(), "luo", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { dir } => man(dir.as_deref(), format),
    }
}

fn schema(root: &Path, cmd: SchemaCommand, format: Format) -> ExitCode {
    match cmd {
        SchemaCommand::Diff { old, new } => commands::schema_diff_command(root, &old, &new, format),
        SchemaCommand::Matrix { view, html } => {
            let view = match view.as_str() {
                "luo" => luo_schema::diff::View::Luo,
                "upstream" => luo_schema::diff::View::Upstream,
                v => {
                    eprintln!("error: unknown view `{v}`; use `luo` or `upstream`");
                    return ExitCode::from(2);
                }
            };
            commands::schema_matrix_command(root, view, html.as_deref(), format)
        }
        SchemaCommand::Check => commands::schema_check_command(root, format),
        SchemaCommand::Table { kernel, output } => {
            commands::schema_table_command(root, &kernel, output.as_deref(), format)
        }
        SchemaCommand::CheckUpdate {
            old,
            new,
            old_kernel,
            new_kernel,
        } => commands::check_update_command(
            &old,
            &new,
            old_kernel.as_deref(),
            new_kernel.as_deref(),
            format,
        ),
        SchemaCommand::Freeze { kernel } => commands::schema_freeze_command(root, &kernel, format),
    }
}

fn simulate(opts: &luo_sim::simulate::Options, stage2: bool) -> ExitCode {
    let mut out = std::io::stdout();
    if stage2 {
        // The last stage prints its report (text, or the last JSON Lines record) itself.
        return match luo_sim::simulate::stage2(&mut out) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("luo simulate: stage 2: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Stage 1 returns only if something failed before or at the execve.
    match luo_sim::simulate::stage1(opts, &mut out) {
        Err(e @ luo_sim::simulate::SimError::Usage(_)) => usage(&e.to_string()),
        Err(e) => {
            eprintln!("luo simulate: {e}");
            ExitCode::FAILURE
        }
        Ok(()) => ExitCode::FAILURE,
    }
}

fn inspect(image: &Path, format: Format) -> ExitCode {
    // Read here, so an unreadable path is reported with its name and the host's words.
    let bytes = match luo_core::image::read_file(image) {
        Ok(b) => b,
        Err(e) => {
            let hint = if image.is_dir() {
                "; give the file `luo simulate --save-image FILE` wrote"
            } else {
                ""
            };
            eprintln!("luo inspect: cannot read {}: {e}{hint}", image.display());
            return ExitCode::from(2);
        }
    };
    match luo_core::image::Image::from_bytes(&bytes).and_then(|img| luo_sim::inspect::inspect(&img))
    {
        Ok(report) => {
            let mut out = Reporter::stdout(format);
            let shown = match format {
                // The inspector's own JSON document, printed as one line like every other.
                Format::Json => serde_json::from_str::<serde_json::Value>(&report.to_json())
                    .map_err(std::io::Error::other)
                    .and_then(|v| out.json(&v)),
                Format::Text => out.text(report.to_text()),
            };
            match shown {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("luo inspect: writing standard output: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Err(e) => {
            eprintln!(
                "luo inspect: {}: {e}\n  (`luo simulate --save-image FILE` writes a valid image)",
                image.display()
            );
            ExitCode::from(2)
        }
    }
}

fn sim(cmd: SimCommand, format: Format) -> ExitCode {
    let mut out = Reporter::stdout(format);
    let done = |r: std::io::Result<()>| match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("luo sim: writing standard output: {e}");
            ExitCode::from(2)
        }
    };
    match cmd {
        SimCommand::Serve { socket, quiet } => {
            if format == Format::Json {
                return usage(
                    "`luo sim serve` is a daemon that logs to standard error; --format json \
                     does not apply",
                );
            }
            let opts = luo_sim::ServeOptions {
                socket: socket.unwrap_or_else(luo_sim::default_socket_path),
                verbose: !quiet,
                ..Default::default()
            };
            // A kexec re-runs this binary with the same arguments; `serve`
            // finds the inherited machine by itself.
            match luo_sim::serve(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("luo sim serve: {}: {e}", opts.socket.display());
                    ExitCode::FAILURE
                }
            }
        }
        SimCommand::Kexec { socket, into } => {
            let socket = socket.unwrap_or_else(luo_sim::default_socket_path);
            match luo_sim::kexec(&socket, into.as_deref()) {
                Ok(line) => done(out.line(&line).and_then(|()| {
                    out.json(&serde_json::json!({
                        "socket": socket.display().to_string(),
                        "result": line,
                    }))
                })),
                Err(luo_sim::SimError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    eprintln!(
                        "luo sim kexec: no daemon on {}: {e}; start one with `luo sim serve` \
                         (or name its socket with --socket or $LUO_SIM_SOCKET)",
                        socket.display()
                    );
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("luo sim kexec: {}: {e}", socket.display());
                    ExitCode::FAILURE
                }
            }
        }
        SimCommand::Preload => done(
            out.line(luo_sim::PRELOAD)
                .and_then(|()| out.json(&serde_json::json!({ "preload": luo_sim::PRELOAD }))),
        ),
    }
}

/// `luo man`: the page of `luo`, or with `--dir` one page per command and subcommand.
fn man(dir: Option<&Path>, format: Format) -> ExitCode {
    if format == Format::Json {
        return usage("`luo man` prints roff; --format json does not apply");
    }
    let cmd = Cli::command();
    let Some(dir) = dir else {
        return match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("luo man: writing standard output: {e}");
                ExitCode::from(2)
            }
        };
    };
    let mut written = Vec::new();
    let mut pages = vec![(String::from("luo"), cmd)];
    while let Some((name, cmd)) = pages.pop() {
        for sub in cmd.get_subcommands() {
            let sub_name = format!("{name}-{}", sub.get_name());
            let bin = format!("{} {}", cmd.get_bin_name().unwrap_or(&name), sub.get_name());
            pages.push((
                sub_name.clone(),
                sub.clone().display_name(sub_name).bin_name(bin),
            ));
        }
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        let rendered = clap_mangen::Man::new(cmd.clone())
            .render(&mut page)
            .and_then(|()| std::fs::create_dir_all(dir))
            .and_then(|()| std::fs::write(&path, &page));
        if let Err(e) = rendered {
            eprintln!(
                "luo man: cannot write {}: {e}; check that the directory is writable",
                path.display()
            );
            return ExitCode::from(2);
        }
        written.push(path);
    }
    eprintln!(
        "luo man: wrote {} pages in {}",
        written.len(),
        dir.display()
    );
    ExitCode::SUCCESS
}
