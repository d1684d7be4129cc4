// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The simulator: a daemon of our own (`luo sim serve` on a private socket), every program run
//! with the preload library, `luo sim kexec` between stages.
//!
//! A program may leave a child behind that holds its sessions over the live update (upstream's
//! selftests do). The kernel ends every process at a kexec; here such children would live on,
//! so this process is a child subreaper and ends every descendant but the daemon once the
//! simulated kexec is done.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use luo_schema::output::Format;
use luo_sim::progress::{self, Progress};

use super::{Options, ProgRun, Program, RunResult, VmError, bail};

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every descendant of this process (through /proc/<pid>/task/<tid>/children).
fn descendants() -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![std::process::id() as i32];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("children");
            let Ok(s) = std::fs::read_to_string(&path) else {
                continue;
            };
            for c in s.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                if !out.contains(&c) {
                    out.push(c);
                    todo.push(c);
                }
            }
        }
    }
    out
}

/// Ends every descendant except `keep` (the daemon) and reaps the ones reparented to us.
fn end_leftovers(keep: u32) {
    for _ in 0..50 {
        let left: Vec<i32> = descendants()
            .into_iter()
            .filter(|&p| p != keep as i32)
            .collect();
        if left.is_empty() {
            return;
        }
        for p in left {
            if let Some(pid) = rustix::process::Pid::from_raw(p) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                // Reaps it if it was reparented to us; a grandchild of another is reaped there.
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read(path)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Runs every stage under the simulator.
pub fn run(opts: &Options, progs: &[Program], dir: &Path) -> Result<RunResult, VmError> {
    let socket = dir.join("sim.sock");
    let _ = std::fs::remove_file(&socket);
    let log = dir.join("daemon.log");
    let logf = std::fs::File::create(&log)
        .map_err(|e| VmError(format!("create {}: {e}", log.display())))?;
    // Orphans of the programs (session holders) become our children, so we can end them.
    let _ = rustix::process::set_child_subreaper(rustix::process::getpid().into());
    let child = Command::new(&opts.luo)
        .args(["sim", "serve", "--quiet", "--socket"])
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .map_err(|e| {
            VmError(format!(
                "cannot start {} sim serve: {e}",
                opts.luo.display()
            ))
        })?;
    let daemon = Daemon { child };
    if !luo_sim::wait_ready(&socket, Duration::from_secs(20)) {
        bail!(
            "the simulator daemon did not answer on {} (log: {})",
            socket.display(),
            log.display()
        );
    }
    let mut r = RunResult::default();
    let preload = luo_sim::PRELOAD;
    let mut bar = Progress::steps(
        progress::wanted(opts.format == Format::Json),
        "sim",
        u64::from(opts.stages) * progs.len() as u64,
    );
    for stage in 1..=opts.stages {
        let t0 = Instant::now();
        for p in progs {
            bar.set(
                r.runs.len() as u64,
                &format!("sim stage {stage} {}", p.name),
            );
            let out = dir.join(format!("sim.{stage}.{}.out", p.name));
            let err = dir.join(format!("sim.{stage}.{}.err", p.name));
            let mk = |f: &Path| {
                std::fs::File::create(f)
                    .map_err(|e| VmError(format!("create {}: {e}", f.display())))
            };
            let mut child = Command::new(&p.dyn_bin)
                .args(p.args_for(stage))
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("HOME", "/")
                .env("LUO_VMTEST_STAGE", stage.to_string())
                .env("LD_PRELOAD", preload)
                .env(luo_sim::SOCKET_ENV, &socket)
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(mk(&out)?)
                .stderr(mk(&err)?)
                .spawn()
                .map_err(|e| VmError(format!("cannot run {}: {e}", p.dyn_bin.display())))?;
            // The same budget as the whole QEMU run: a program that hangs is ended.
            let deadline = Instant::now() + Duration::from_secs(opts.timeout);
            let status = loop {
                match child.try_wait() {
                    Ok(Some(st)) => break Some(st),
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break None;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    Err(e) => bail!("waiting for {}: {e}", p.dyn_bin.display()),
                }
            };
            use std::os::unix::process::ExitStatusExt as _;
            let status = match status.map(|s| (s.code(), s.signal())) {
                Some((Some(c), _)) => format!("exit {c}"),
                Some((None, Some(s))) => format!("signal {s}"),
                Some(_) => "unknown".into(),
                None => format!("timed out after {} s (--timeout)", opts.timeout),
            };
            r.runs.push(ProgRun {
                stage,
                name: p.name.clone(),
                stdout: lines(&out),
                stderr: lines(&err),
                status,
            });
        }
        if stage < opts.stages
            && let Err(e) = luo_sim::kexec(&socket, None)
        {
            r.error = Some(format!("luo sim kexec after stage {stage}: {e}"));
            end_leftovers(daemon.child.id());
            r.stage_secs.push(t0.elapsed().as_secs_f64());
            return Ok(r);
        }
        // The kernel ends every process at a kexec (and at the end).
        end_leftovers(daemon.child.id());
        r.stage_secs.push(t0.elapsed().as_secs_f64());
    }
    bar.finish();
    drop(daemon);
    Ok(r)
}
