// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The real kernel: QEMU (TCG) boots the kernel with an initramfs built here; the guest's /init
//! (`init.c`) runs the stages across real kexecs and reports on a serial port of its own.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cpio::Cpio;
use super::image::{self, Image};
use super::{Options, ProgRun, Program, RunResult, VmError, bail, run_cmd};

use luo_schema::output::Format;
use luo_sim::progress::{self, Progress};

/// Source of the guest's /init.
const INIT_C: &str = include_str!("init.c");

/// The kernel images used without `--kernel`, in order: the shared one beside the repository
/// root, then the one `tests/kernel/build.sh` builds by default.
pub(crate) fn default_kernels(root: &Path) -> [PathBuf; 2] {
    [
        root.join("../shared/realkernel/bzImage-7.2.13"),
        root.join("target/realkernel/bzImage-7.2"),
    ]
}

/// The base command line; `luo_vmtest_stage=N` is added (and replaced by /init at each kexec).
/// `loglevel=4` keeps LUO's informational messages off the console log's way; the results
/// travel on ttyS1 anyway.
const CMDLINE: &str = "console=ttyS0 panic=-1 kho=on liveupdate=on loglevel=4";

/// Where QEMU and the kernels are.
pub struct Setup {
    qemu: PathBuf,
    /// The distinct images; QEMU boots the first.
    images: Vec<Image>,
    /// Per stage (stage 1 first), the index in `images` of the kernel it runs on.
    stage_image: Vec<usize>,
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    })
}

impl Setup {
    /// Finds `qemu-system-x86_64` and the kernel image, or says how to get them.
    pub fn find(opts: &Options) -> Result<Setup, VmError> {
        let Some(qemu) = find_in_path("qemu-system-x86_64") else {
            bail!(
                "qemu-system-x86_64 is not in PATH: install it (Debian: \
                 `apt-get install qemu-system-x86`), or run only the simulator with --sim"
            );
        };
        let candidates = match &opts.kernel {
            Some(k) => vec![k.clone()],
            None => default_kernels(&opts.root).to_vec(),
        };
        let Some(kernel) = candidates.iter().find(|k| k.is_file()).cloned() else {
            let names: Vec<String> = candidates.iter().map(|k| k.display().to_string()).collect();
            bail!(
                "kernel image not found ({}): pass --kernel PATH, or build one with \
                 tests/kernel/build.sh (Debian's linux-source-7.2 and \
                 tests/kernel/fragment.config; it writes target/realkernel/bzImage-7.2; \
                 README.md, \"Run programs on the real kernel\")",
                names.join(", ")
            );
        };
        let (images, stage_image) = image::plan(&kernel, &opts.next_kernels, opts.stages)?;
        Ok(Setup {
            qemu,
            images,
            stage_image,
        })
    }

    /// Per stage, the image it boots (for the report).
    pub fn stage_images(&self) -> impl Iterator<Item = &Image> {
        self.stage_image.iter().map(|&i| &self.images[i])
    }

    /// Boots the kernel and runs every stage; the result of each program.
    pub fn run(&self, opts: &Options, progs: &[Program], dir: &Path) -> Result<RunResult, VmError> {
        let init = dir.join("init");
        let init_c = dir.join("init.c");
        std::fs::write(&init_c, INIT_C)
            .map_err(|e| VmError(format!("write {}: {e}", init_c.display())))?;
        run_cmd(
            Command::new("gcc")
                .args(["-static", "-O2", "-Wall", "-o"])
                .arg(&init)
                .arg(&init_c),
            "gcc -static (the guest's /init; Debian: libc6-dev has the static libc)",
        )?;
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| VmError(format!("read {}: {e}", p.display())));
        let mut cpio = Cpio::new();
        for d in ["proc", "sys", "dev", "tmp", "vmtest"] {
            cpio.dir(d);
        }
        cpio.file("init", 0o755, &read(&init)?);
        // The image each kexec loads: /vmtest/kernel (the one QEMU booted) unless a plan line
        // `kernel <TAB> STAGE <TAB> PATH` names another for that stage.
        let mut plan = format!("stages\t{}\n", opts.stages);
        for (i, img) in self.images.iter().enumerate() {
            let name = if i == 0 {
                "vmtest/kernel".to_owned()
            } else {
                format!("vmtest/kernel.{i}")
            };
            cpio.file(&name, 0o644, &read(&img.path)?);
        }
        for (stage, &i) in self.stage_image.iter().enumerate().skip(1) {
            if i != 0 {
                plan.push_str(&format!("kernel\t{}\t/vmtest/kernel.{i}\n", stage + 1));
            }
        }
        // One plan line per (stage, program), in the order the guest runs them.
        let mut order = Vec::new();
        for stage in 1..=opts.stages {
            for p in progs {
                let args = p.args_for(stage);
                if args.iter().any(|a| a.contains('\t')) {
                    bail!("{}: arguments cannot contain tabs", p.name);
                }
                plan.push_str(&format!("{stage}\t/vmtest/{}", p.name));
                for a in args {
                    plan.push('\t');
                    plan.push_str(&a);
                }
                plan.push('\n');
                order.push((stage, p.name.clone()));
            }
        }
        cpio.file("vmtest/plan", 0o644, plan.as_bytes());
        for p in progs {
            cpio.file(&format!("vmtest/{}", p.name), 0o755, &read(&p.static_bin)?);
        }
        let initrd = dir.join("initramfs.cpio");
        std::fs::write(&initrd, cpio.finish())
            .map_err(|e| VmError(format!("write {}: {e}", initrd.display())))?;

        let console = dir.join("console.log");
        let results = dir.join("results.log");
        let _ = std::fs::remove_file(&results);
        let start = Instant::now();
        let mut child = Command::new(&self.qemu)
            .args(["-accel", "tcg", "-cpu", "max", "-m", "2G", "-smp", "1"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-serial")
            .arg(format!("file:{}", results.display()))
            .arg("-kernel")
            .arg(&self.images[0].path)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!("{CMDLINE} luo_vmtest_stage=1"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| VmError(format!("cannot start {}: {e}", self.qemu.display())))?;
        let deadline = start + Duration::from_secs(opts.timeout);
        let total = order.len() as u64;
        let mut parser = Parser::new(order, start);
        let mut bar = Progress::steps(
            progress::wanted(opts.format == Format::Json),
            "kernel",
            total,
        );
        let status = loop {
            parser.feed(&results);
            let next = parser
                .order
                .get(parser.runs.len())
                .map_or("shutdown".to_string(), |(stage, name)| {
                    format!("kernel stage {stage} {name}")
                });
            bar.set(parser.runs.len() as u64, &next);
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) => {}
                Err(e) => bail!("waiting for QEMU: {e}"),
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        bar.finish();
        parser.feed(&results);
        let mut qemu_err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut qemu_err);
        }
        let mut r = parser.finish();
        if r.error.is_none() {
            r.error = self.check_kernels(&r.kernels);
        }
        if r.error.is_none() && !parser.done {
            let tail = std::fs::read_to_string(&console).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            let why = match status {
                None => format!("timed out after {} s (--timeout)", opts.timeout),
                Some(st) => format!("QEMU exited ({st}) {}", qemu_err.trim()),
            };
            r.error = Some(format!(
                "the guest stopped before the last stage ended: {why}; console tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        Ok(r)
    }
}

impl Setup {
    /// Whether every stage ran on the image meant for it (`ran`: per stage, the `uname`
    /// release and version the guest reported); the first mismatch, described.
    fn check_kernels(&self, ran: &[(u32, String, String)]) -> Option<String> {
        for (stage, release, version) in ran {
            let Some(img) = usize::try_from(*stage)
                .ok()
                .and_then(|s| self.stage_image.get(s.wrapping_sub(1)))
                .map(|&i| &self.images[i])
            else {
                return Some(format!(
                    "the guest reported stage {stage}, which was not planned"
                ));
            };
            if img.is_running(release, version) == Some(false) {
                return Some(format!(
                    "stage {stage} ran on Linux {release} {version}, not on {} ({}): the kexec \
                     loaded another image than planned",
                    img.path.display(),
                    img.ident.as_deref().unwrap_or_default()
                ));
            }
        }
        None
    }
}

/// Reads the results port's log as it grows.
struct Parser {
    order: Vec<(u32, String)>,
    seen: usize,
    partial: String,
    runs: Vec<ProgRun>,
    error: Option<String>,
    done: bool,
    start: Instant,
    marks: Vec<Instant>,
    kernels: Vec<(u32, String, String)>,
}

impl Parser {
    fn new(order: Vec<(u32, String)>, start: Instant) -> Parser {
        Parser {
            order,
            seen: 0,
            partial: String::new(),
            runs: Vec::new(),
            error: None,
            done: false,
            start,
            marks: Vec::new(),
            kernels: Vec::new(),
        }
    }

    fn feed(&mut self, path: &Path) {
        let Ok(bytes) = std::fs::read(path) else {
            return;
        };
        if bytes.len() <= self.seen {
            return;
        }
        self.partial
            .push_str(&String::from_utf8_lossy(&bytes[self.seen..]));
        self.seen = bytes.len();
        while let Some(nl) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=nl).collect();
            self.line(line.trim_end_matches(['\n', '\r']));
        }
    }

    fn line(&mut self, l: &str) {
        let Some(m) = l.strip_prefix("@@luo-vmtest ") else {
            let cur = self.runs.last_mut();
            match (l.get(..2), cur) {
                (Some("o "), Some(r)) => r.stdout.push(l[2..].to_owned()),
                (Some("e "), Some(r)) => r.stderr.push(l[2..].to_owned()),
                (Some("o") | Some("e"), Some(r)) if l.len() == 1 => {
                    if l == "o" {
                        r.stdout.push(String::new());
                    } else {
                        r.stderr.push(String::new());
                    }
                }
                _ => {}
            }
            return;
        };
        let w: Vec<&str> = m.split(' ').collect();
        match w.as_slice() {
            ["stage", _] => self.marks.push(Instant::now()),
            // `uname -r` and `uname -v` (which has spaces) of the running kernel.
            ["kernel", s, release, version @ ..] => self.kernels.push((
                s.parse().unwrap_or(0),
                (*release).to_owned(),
                version.join(" "),
            )),
            ["run", s, idx] => {
                let idx: usize = idx.parse().unwrap_or(0);
                let (stage, name) = self
                    .order
                    .get(idx.wrapping_sub(1))
                    .cloned()
                    .unwrap_or((s.parse().unwrap_or(0), format!("#{idx}")));
                self.runs.push(ProgRun {
                    stage,
                    name,
                    status: "running".into(),
                    ..ProgRun::default()
                });
            }
            ["status", _, _, rest @ ..] => {
                if let Some(r) = self.runs.last_mut() {
                    r.status = rest.join(" ");
                }
            }
            ["kexec", _] => {}
            ["done"] => {
                self.done = true;
                self.marks.push(Instant::now());
            }
            ["error", ..] => self.error = Some(format!("guest /init: {}", &m[6..])),
            _ => {}
        }
    }

    fn finish(&mut self) -> RunResult {
        // marks: the start of each stage, then the end of the last one.
        let mut secs = Vec::new();
        for w in self.marks.windows(2) {
            secs.push(w[1].duration_since(w[0]).as_secs_f64());
        }
        RunResult {
            runs: std::mem::take(&mut self.runs),
            error: self.error.take(),
            stage_secs: secs,
            kernels: std::mem::take(&mut self.kernels),
            boot_secs: self
                .marks
                .first()
                .map(|t| t.duration_since(self.start).as_secs_f64()),
        }
    }
}
