// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The last stage: every session and file retrieved, the data read back and checked against
//! the pattern stage 1 wrote, the report of what the live updates carried.

use std::io::Write;
use std::time::Duration;

use luo_abi::Errno;
use luo_core::{BootOptions, Handover, Kernel};

use super::*;

/// What the last stage found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// `liveupdate_num` of the last kernel.
    pub liveupdate_num: u64,
    /// Sessions retrieved (in the last stage).
    pub sessions: u32,
    /// Files retrieved (in the last stage).
    pub files: u32,
    /// Bytes checked (in the last stage).
    pub verified_bytes: u64,
    /// Preserved pages left (beyond LUO's root) plus incoming pages never restored.
    pub preserved_pages_left: u64,
    /// What the `vm` scenario checked, file type by file type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<vm::VmReport>,
}

pub(super) fn retrieve_and_verify(
    k: &Kernel,
    p: &Plan,
    rep: &mut Reporter<'_>,
) -> Result<u64, SimError> {
    // The data the previous stage wrote.
    let seed = hop_seed(p.seed, p.hop - 1);
    let (sessions, files, size) = (p.sessions, p.files, p.size);
    let (fds, t) = timed(|| {
        let dev = op(|| "open /dev/liveupdate".into(), k.open_dev())?;
        let mut all = Vec::new();
        for s in 0..sessions {
            let sfd = op(
                || format!("retrieve session {s}"),
                k.retrieve_session(dev, &session_name(s)),
            )?;
            let mut v = Vec::new();
            for f in 0..files {
                v.push(op(
                    || format!("retrieve session {s} file {f}"),
                    k.retrieve_fd(sfd, token(s, f)),
                )?);
            }
            all.push((sfd, v));
        }
        op(|| "close /dev/liveupdate".into(), k.close(dev))?;
        Ok(all)
    })?;
    rep.phase(
        "retrieve",
        t,
        &format!("{sessions} sessions, {} files", sessions * files),
    )?;
    let mut bar = rep.bytes(
        "verify",
        u64::from(sessions)
            .saturating_mul(u64::from(files))
            .saturating_mul(size),
    );
    let (verified, t) = timed(|| {
        let mut buf = vec![0u8; 1 << 16];
        let mut want = vec![0u8; 1 << 16];
        let mut total = 0u64;
        for (s, (_, v)) in fds.iter().enumerate() {
            for (f, &fd) in v.iter().enumerate() {
                let (s, f) = (s as u32, f as u32);
                let mut off = 0u64;
                loop {
                    let n = op(|| "read".into(), k.pread(fd, off, &mut buf))?;
                    if n == 0 {
                        break;
                    }
                    fill(seed, s, f, off, &mut want[..n]);
                    if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
                        return Err(SimError::Mismatch {
                            session: s,
                            file: f,
                            offset: off + i as u64,
                            got: buf[i],
                            want: want[i],
                        });
                    }
                    bar.inc(n as u64);
                    off += n as u64;
                }
                if off != size {
                    return Err(SimError::Op {
                        what: format!("session {s} file {f}: size {off}, expected {size}"),
                        errno: Errno::EIO,
                    });
                }
                total += off;
            }
        }
        Ok(total)
    })?;
    bar.finish();
    rep.phase(
        "verify",
        t,
        &format!("{}, every one checked", exact_bytes(verified)),
    )?;
    let (_, t) = timed(|| {
        for (s, (sfd, v)) in fds.iter().enumerate() {
            op(|| format!("finish session {s}"), k.finish_session(*sfd))?;
            op(|| "close".into(), k.close(*sfd))?;
            for &fd in v {
                op(|| "close".into(), k.close(fd))?;
            }
        }
        Ok(())
    })?;
    let st = k.stats();
    let left = st.preserved_beyond_root() + st.kho.incoming_pages;
    rep.phase("finish", t, &format!("{left} preserved pages left"))?;
    if left != 0 {
        return Err(SimError::Leak(left));
    }
    Ok(verified)
}

/// A later stage: boot from the inherited handover, retrieve, verify every byte, finish; then
/// either preserve again and `execve` the next stage, or (last hop) print the report (a
/// summary, or the last JSON Lines record) and return it.
pub fn stage2(out: &mut dyn Write) -> Result<Report, SimError> {
    // Stage 1 asked whether this program can be its next stage: yes.
    luo_core::exec::answer_probe();
    let plan = Plan::from_env()?;
    let mut rep = plan.reporter(out, plan.hop.saturating_add(1));
    // How long the execve took: from the previous stage's clock reading to now.
    if let Some(at) = std::env::var(EXEC_AT_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let took = Duration::from_nanos(monotonic_ns().saturating_sub(at));
        rep.phase(
            "exec",
            took,
            &format!("execve {}, handover inherited", plan.next.display()),
        )?;
    }
    let report = stage2_with(&plan, &mut rep)?;
    rep.report(&report)?;
    rep.out.flush()?;
    Ok(report)
}

pub(super) fn stage2_with(plan: &Plan, rep: &mut Reporter<'_>) -> Result<Report, SimError> {
    let kernel = plan.kernel(plan.hop);
    let (k, t) = timed(|| {
        let h = Handover::from_env()?.ok_or(SimError::NoHandover(luo_core::exec::HANDOVER_ENV))?;
        let boot = BootOptions {
            version: kernel,
            ..crate::machine::default_options()
        };
        // A format this kernel does not read is a clean error here (upstream: panic).
        Kernel::boot(&boot, Some(h)).map_err(|e| SimError::BootAs(kernel, e))
    })?;
    rep.phase(
        "boot",
        t,
        &format!(
            "kernel luo:{kernel}; liveupdate_num {}; {} incoming pages",
            k.liveupdate_num(),
            k.stats().kho.incoming_pages
        ),
    )?;
    if plan.scenario == Scenario::Vm {
        // One hop (`Plan::check`): this is the last stage.
        return vm::retrieve_and_verify(&k, plan, rep);
    }
    let verified = retrieve_and_verify(&k, plan, rep)?;
    if plan.hop < plan.hops {
        populate(&k, plan, rep)?;
        // Returns only on failure.
        reboot_and_exec(k, plan, rep)?;
        return Err(SimError::NoHandover("a successful execve"));
    }
    let st = k.stats();
    Ok(Report {
        liveupdate_num: k.liveupdate_num(),
        sessions: plan.sessions,
        files: plan.sessions * plan.files,
        verified_bytes: verified,
        preserved_pages_left: st.preserved_beyond_root() + st.kho.incoming_pages,
        vm: None,
    })
}
