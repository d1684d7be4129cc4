//! `luo`: the command-line front end of the luo framework.
//!
//! `luo gen` turns `spec/` into `generated/` (C headers, Rust ABI types,
//! layout snapshots); `luo gen --check` fails when the committed files are
//! stale; `luo layout` shows a struct pahole-style. The spec-side commands
//! live in `luo_spec::commands` (also built as the standalone `luo-gen`), so
//! generating never depends on the generated crate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use luo_spec::commands;

mod vmtest;

#[derive(Parser)]
#[command(
    name = "luo",
    version,
    about = "Declared, generated, checked Live Update Orchestrator ABIs"
)]
struct Cli {
    /// Repository root (holds `spec/` and `generated/`).
    #[arg(long, global = true, default_value = ".")]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
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
        /// What crosses: `basic` (sessions of memfds) or `vm` (one VM's files, kernel next).
        #[arg(long, default_value = "basic")]
        scenario: luo_sim::simulate::Scenario,
        /// How the HugeTLB pools cross in the vm scenario: `subsystem` (the seed's) or `flb`
        /// (upstream's RFC).
        #[arg(long, default_value = "subsystem", value_parser = luo_sim::simulate::parse_hugetlb_form)]
        hugetlb_form: luo_sim::simulate::HugetlbForm,
        /// Sessions to create.
        #[arg(long, default_value_t = 4)]
        sessions: u32,
        /// memfds per session.
        #[arg(long, default_value_t = 4)]
        files: u32,
        /// Bytes per memfd (vm: bytes of guest RAM, a multiple of 4096).
        #[arg(long, default_value_t = 1 << 20)]
        size: u64,
        /// Seed of the data pattern.
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
        /// Live updates in a row, each into a new process.
        #[arg(long, default_value_t = 1)]
        hops: u32,
        /// Binary to kexec into (default: this one; another build plays another kernel).
        #[arg(long)]
        next: Option<PathBuf>,
        /// Save the handover image here before the kexec (for `luo inspect`).
        #[arg(long)]
        save_image: Option<PathBuf>,
        /// One JSON object per phase.
        #[arg(long)]
        json: bool,
        /// Kernel the first stage plays (6.19, 7.0, 7.3, next) [default: 7.3; vm: next, the
        /// only kernel it runs on].
        #[arg(long)]
        from: Option<luo_core::KernelVersion>,
        /// Kernel(s) the later stages play, in order (`--to 7.3 --to next`; the last repeats).
        #[arg(long)]
        to: Vec<luo_core::KernelVersion>,
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
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
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
        #[arg(long, default_value_t = 2)]
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
        /// Target: x86_64, i386, arm64, arm64-16k, arm64-64k.
        #[arg(long, default_value = "x86_64")]
        arch: String,
        /// Which definition, when versions differ: `component/version`
        /// (default: the version the default kernel writes).
        #[arg(long)]
        version: Option<String>,
    },
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
        /// `text` or `json`.
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// Which kernel can live-update into which, per component.
    Matrix {
        /// `luo` (this tree's build of every kernel, as diff, check-update and simulate)
        /// or `upstream` (the released kernels' frozen snapshots).
        #[arg(long, default_value = "luo")]
        view: String,
        /// Also write an HTML page.
        #[arg(long)]
        html: Option<PathBuf>,
        /// `text` or `json`.
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// Fail on an unversioned break against the released kernels' frozen snapshots.
    Check,
    /// Write a kernel's `.liveupdate_features` ABI table (raw bytes).
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

fn format(name: &str) -> Option<commands::Format> {
    match name {
        "text" => Some(commands::Format::Text),
        "json" => Some(commands::Format::Json),
        _ => None,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Gen { check, verbose } => commands::gen_command(&cli.root, check, verbose),
        Command::Schema(cmd) => schema(&cli.root, cmd),
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
            use luo_sim::simulate::Scenario;
            let from = from.unwrap_or(match scenario {
                Scenario::Basic => luo_core::KernelVersion::default(),
                Scenario::Vm => luo_core::KernelVersion::Next,
            });
            let opts = luo_sim::simulate::Options {
                sessions,
                files,
                size,
                seed,
                hops,
                next,
                save_image,
                json,
                stage2_args: vec!["simulate".into(), "--stage2".into()],
                kernels: std::iter::once(from).chain(to).collect(),
                scenario,
                hugetlb_form,
            };
            simulate(&opts, stage2)
        }
        Command::Inspect { image, json } => inspect(&image, json),
        Command::Sim(cmd) => sim(cmd),
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
                root: cli.root.clone(),
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
        } => commands::layout_command(&cli.root, &name, &arch, version.as_deref()),
    }
}

fn schema(root: &std::path::Path, cmd: SchemaCommand) -> ExitCode {
    let bad_format = |f: &str| {
        eprintln!("error: unknown format `{f}`; use `text` or `json`");
        ExitCode::from(2)
    };
    match cmd {
        SchemaCommand::Diff {
            old,
            new,
            format: f,
        } => match format(&f) {
            Some(fmt) => commands::schema_diff_command(root, &old, &new, fmt),
            None => bad_format(&f),
        },
        SchemaCommand::Matrix {
            view,
            html,
            format: f,
        } => {
            let view = match view.as_str() {
                "luo" => luo_spec::schema_diff::View::Luo,
                "upstream" => luo_spec::schema_diff::View::Upstream,
                v => {
                    eprintln!("error: unknown view `{v}`; use `luo` or `upstream`");
                    return ExitCode::from(2);
                }
            };
            match format(&f) {
                Some(fmt) => commands::schema_matrix_command(root, view, html.as_deref(), fmt),
                None => bad_format(&f),
            }
        }
        SchemaCommand::Check => commands::schema_check_command(root),
        SchemaCommand::Table { kernel, output } => {
            commands::schema_table_command(root, &kernel, output.as_deref())
        }
        SchemaCommand::CheckUpdate {
            old,
            new,
            old_kernel,
            new_kernel,
        } => {
            commands::check_update_command(&old, &new, old_kernel.as_deref(), new_kernel.as_deref())
        }
        SchemaCommand::Freeze { kernel } => commands::schema_freeze_command(root, &kernel),
    }
}

fn simulate(opts: &luo_sim::simulate::Options, stage2: bool) -> ExitCode {
    let mut out = std::io::stdout();
    if stage2 {
        return match luo_sim::simulate::stage2(&mut out) {
            Ok(report) => {
                println!(
                    "report {}",
                    serde_json::to_string(&report).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("luo simulate: stage 2: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Stage 1 returns only if something failed before or at the execve.
    if let Err(e) = luo_sim::simulate::stage1(opts, &mut out) {
        eprintln!("luo simulate: {e}");
    }
    ExitCode::FAILURE
}

fn inspect(image: &std::path::Path, json: bool) -> ExitCode {
    match luo_core::image::Image::load(image).and_then(|img| luo_core::inspect::inspect(&img)) {
        Ok(report) if json => {
            println!("{}", report.to_json());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", report.to_text());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("luo inspect: {e}");
            ExitCode::from(2)
        }
    }
}

fn sim(cmd: SimCommand) -> ExitCode {
    match cmd {
        SimCommand::Serve { socket, quiet } => {
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
                    eprintln!("luo sim serve: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        SimCommand::Kexec { socket, into } => {
            let socket = socket.unwrap_or_else(luo_sim::default_socket_path);
            match luo_sim::kexec(&socket, into.as_deref()) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("luo sim kexec: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        SimCommand::Preload => {
            println!("{}", luo_sim::PRELOAD);
            ExitCode::SUCCESS
        }
    }
}
