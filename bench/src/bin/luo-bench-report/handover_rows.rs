// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The rows of whole handovers: memfd preserve and retrieve, the v1 migration, sessions and
//! their scaling, and the blackout of a VM's live update.

use std::time::Instant;

use luo_bench::handover::{self, FOLIOS_1G, Memcpy};
use luo_bench::measure::{self};
use luo_core::KernelVersion;

use super::*;

/// Median over rounds of a per-round value.
pub(super) fn med(v: &[f64]) -> f64 {
    measure::median(v)
}

pub(super) fn ns(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// ns per folio of the median memcpy of `folios` folio records, timed `copies` times.
pub(super) fn memcpy_ns(m: &mut Memcpy, copies: usize) -> f64 {
    let v: Vec<f64> = (0..copies).map(|_| ns(m.time())).collect();
    med(&v)
}

/// Instructions per unit of `child handover <op> 1`, counted inside `toggles` only.
pub(super) fn handover_instructions(
    o: &Opts,
    id: &str,
    op: &str,
    toggles: &[&str],
    units: f64,
    unit: &str,
    what: String,
) -> Result<Option<Row>, String> {
    if !o.callgrind {
        return Ok(None);
    }
    let args: Vec<String> = ["child", "handover", op, "1"].map(String::from).to_vec();
    let total = measure::callgrind_collect(&exe()?, &args, toggles)?;
    Ok(Some(row(
        RowSpec {
            id,
            name: format!("{id}/instructions"),
            what,
            unit,
            method: "callgrind",
            target: Target::None,
            samples: 1,
        },
        total as f64 / units,
        None,
    )))
}

pub(super) fn memfd_preserve(o: &Opts) -> Result<Vec<Row>, String> {
    let folios = FOLIOS_1G;
    let mut fx = handover::MemfdFixture::new(KernelVersion::V7_3, folios)?;
    let mut m = Memcpy::new((folios * handover::FOLIO_RECORD) as usize);
    let (mut rec, mut total, mut pin, mut base) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let rounds = o.rounds(21);
    fx.time_preserve()?; // warm-up
    for _ in 0..rounds {
        let (p, q) = fx.time_preserve()?;
        let f = folios as f64;
        total.push(ns(p) / f);
        pin.push(ns(q) / f);
        rec.push((ns(p) - ns(q)).max(0.0) / f);
        base.push(memcpy_ns(&mut m, 5) / f);
    }
    let b = med(&base);
    let ins = handover_instructions(
        o,
        "memfd_preserve",
        "preserve",
        &["luo_core::uapi::<impl luo_core::kernel::Kernel>::preserve_fd"],
        folios as f64,
        "instructions/folio",
        "instructions per folio of one PRESERVE_FD of the 1 GiB memfd (callgrind; pinning included)".into(),
    )?;
    let spec = |name: &str, what: String, target| RowSpec {
        id: "memfd_preserve",
        name: format!("memfd_preserve/{name}"),
        what,
        unit: "ns/folio",
        method: "wall-median",
        target,
        samples: rounds as u64,
    };
    Ok(vec![
        row(
            spec(
                "record",
                "PRESERVE_FD of a 1 GiB memfd (262,144 folios) minus the host-side listing and pinning of its folios, per folio, vs memcpy of its 16-byte records".into(),
                Target::MaxRatio(3.0),
            ),
            med(&rec),
            Some(("memcpy", b)),
        ),
        row(
            spec(
                "preserve_fd",
                "the whole PRESERVE_FD (pinning included), per folio".into(),
                Target::None,
            ),
            med(&total),
            Some(("memcpy", b)),
        ),
        row(
            spec("pin", "the host-side pin_folios + unpin alone, per folio".into(), Target::None),
            med(&pin),
            None,
        ),
    ]
    .into_iter()
    .chain(ins)
    .collect())
}

pub(super) fn memfd_retrieve(o: &Opts) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let sizes: &[(u32, usize)] = if o.quick {
        &[(14, 5), (18, 5), (22, 1)]
    } else {
        &[(14, 15), (18, 11), (22, 3)]
    };
    for &(log2, rounds) in sizes {
        let folios = 1u64 << log2;
        let mut m = Memcpy::new((folios * handover::FOLIO_RECORD) as usize);
        let (mut v, mut base) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let d = handover::time_retrieve(KernelVersion::V7_3, KernelVersion::V7_3, folios)?;
            v.push(ns(d) / folios as f64);
            base.push(memcpy_ns(&mut m, 5) / folios as f64);
        }
        let main = folios == FOLIOS_1G;
        rows.push(row(
            RowSpec {
                id: "memfd_retrieve",
                name: format!("memfd_retrieve/2^{log2}"),
                what: format!(
                    "RETRIEVE_FD of a memfd of {folios} folios in the next kernel (validate the folio array, restore every folio), per folio, vs memcpy of its records"
                ),
                unit: "ns/folio",
                method: "wall-median",
                target: if main { Target::MaxRatio(3.0) } else { Target::None },
                samples: rounds as u64,
            },
            med(&v),
            Some(("memcpy", med(&base))),
        ));
    }
    rows.extend(handover_instructions(
        o,
        "memfd_retrieve",
        "retrieve",
        &["luo_core::uapi::<impl luo_core::kernel::Kernel>::retrieve_fd"],
        FOLIOS_1G as f64,
        "instructions/folio",
        "instructions per folio of one RETRIEVE_FD of the 1 GiB memfd (callgrind)".into(),
    )?);
    Ok(rows)
}

pub(super) fn migrate_v1(o: &Opts) -> Result<Vec<Row>, String> {
    let folios = FOLIOS_1G;
    let rounds = o.rounds(11);
    let mut rows = Vec::new();
    // The reading kernel: 7.3 (memfd-v2 is its own format) and next (the newest handler,
    // which reads memfd-v2 through its reader registration).
    for (to, name) in [(KernelVersion::V7_3, "7.3"), (KernelVersion::Next, "next")] {
        let (mut v1, mut v2) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let d = handover::time_retrieve(KernelVersion::V7_0, to, folios)?;
            v1.push(ns(d) / folios as f64);
            let d = handover::time_retrieve(KernelVersion::V7_3, to, folios)?;
            v2.push(ns(d) / folios as f64);
        }
        rows.push(row(
            RowSpec {
                id: "migrate_v1",
                name: format!("migrate_v1/retrieve_in_{name}"),
                what: format!(
                    "RETRIEVE_FD in a {name} kernel of a 1 GiB memfd a 7.0 kernel preserved as memfd-v1 (read through the generated v1 -> v2 migration), per folio, vs the same memfd preserved by 7.3 as memfd-v2"
                ),
                unit: "ns/folio",
                method: "wall-median",
                target: Target::MaxRatio(1.3),
                samples: rounds as u64,
            },
            med(&v1),
            Some(("memfd-v2", med(&v2))),
        ));
    }
    Ok(rows)
}

pub(super) const SESSIONS: u64 = 2_000;
pub(super) const FILES: u64 = 10_000;

pub(super) fn sessions_scaling(o: &Opts) -> Result<Vec<Row>, String> {
    let rounds = o.rounds(7).min(5);
    let mut rows = Vec::new();
    let mut per_size = Vec::new();
    for n in [1_000u64, 10_000, 100_000] {
        let mut v = Vec::new();
        for _ in 0..rounds {
            let t = handover::time_session_scaling(n)?;
            v.push((
                t.deserialize.as_secs_f64() * 1e3,
                t.retrieve.as_secs_f64() * 1e3,
                t.finish.as_secs_f64() * 1e3,
            ));
        }
        let all = med(&v.iter().map(|t| t.0 + t.1 + t.2).collect::<Vec<_>>());
        let parts = (
            med(&v.iter().map(|t| t.0).collect::<Vec<_>>()),
            med(&v.iter().map(|t| t.1).collect::<Vec<_>>()),
            med(&v.iter().map(|t| t.2).collect::<Vec<_>>()),
        );
        per_size.push((n, all, parts));
    }
    for (i, &(n, all, (de, re, fi))) in per_size.iter().enumerate() {
        // Each size against the one ten times smaller: linear scaling is a ratio of 10.
        let smaller = i.checked_sub(1).map(|j| per_size[j]);
        rows.push(row(
            RowSpec {
                id: "sessions_scaling",
                name: format!("sessions_scaling/{n}"),
                what: format!(
                    "{n} empty sessions across a kexec (as `luo simulate --sessions {n} --files 0`): next kernel's boot + first open (deserialize) {de:.1} ms, RETRIEVE_SESSION of each {re:.1} ms, FINISH + close of each {fi:.1} ms; against the size ten times smaller"
                ),
                unit: "ms",
                method: "wall-median",
                target: if n == 100_000 {
                    Target::MaxRatio(12.0)
                } else {
                    Target::None
                },
                samples: rounds as u64,
            },
            all,
            smaller.map(|(m, a, _)| (if m == 1_000 { "1000 sessions" } else { "10000 sessions" }, a)),
        ));
    }
    Ok(rows)
}

pub(super) fn sessions(o: &Opts) -> Result<Vec<Row>, String> {
    let rounds = o.rounds(15);
    let entries = (SESSIONS + FILES) as f64;
    let bytes = handover::entry_bytes(SESSIONS, FILES);
    let mut m = Memcpy::new(bytes as usize);
    let (mut both, mut ser, mut de, mut base) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let f = handover::SessionsFixture::new(KernelVersion::V7_3, SESSIONS, FILES, 0)?;
        let t = handover::time_sessions(f)?;
        ser.push(ns(t.serialize) / entries);
        de.push(ns(t.deserialize) / entries);
        both.push((ns(t.serialize) + ns(t.deserialize)) / entries);
        // One copy out and one back, the memcpy equivalent of serialize + deserialize.
        base.push(2.0 * memcpy_ns(&mut m, 21) / entries);
    }
    let b = med(&base);
    let spec = |name: &str, what: &str, target| RowSpec {
        id: "sessions",
        name: format!("sessions/{name}"),
        what: what.into(),
        unit: "ns/entry",
        method: "wall-median",
        target,
        samples: rounds as u64,
    };
    Ok(vec![
        row(
            spec(
                "serialize+deserialize",
                "2,000 sessions + 10,000 files: reboot() (freeze each file, write the session and file chains, KHO handover) + the next kernel's boot and first /dev/liveupdate open (deserialize), per entry, vs memcpy of the entry bytes out and back",
                Target::MaxRatio(5.0),
            ),
            med(&both),
            Some(("memcpy x2", b)),
        ),
        row(
            spec("serialize", "reboot() alone, per entry", Target::None),
            med(&ser),
            Some(("memcpy", b / 2.0)),
        ),
        row(
            spec(
                "deserialize",
                "boot + first open alone, per entry",
                Target::None,
            ),
            med(&de),
            Some(("memcpy", b / 2.0)),
        ),
    ]
    .into_iter()
    .chain(handover_instructions(
        o,
        "sessions",
        "sessions",
        &[
            "luo_core::kernel::Kernel::kexec",
            "luo_core::kernel::Kernel::boot",
            "luo_core::kernel::Kernel::open_dev",
        ],
        entries,
        "instructions/entry",
        "instructions per entry of reboot() + boot + first open (callgrind; includes the fixture's own fresh boot and open, a few thousand instructions in all)".into(),
    )?)
    .collect())
}

/// One blackout run in a child process of `exe` (this binary, or an older commit's, which
/// knows only the 4 KiB memfd guest).
pub(super) fn blackout_child(
    exe: &std::path::Path,
    guest: handover::Guest,
    folios: u64,
    touched: u64,
) -> Result<handover::Blackout, String> {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["child", "blackout"])
        .args([folios, SESSIONS, FILES, touched].map(|n| n.to_string()));
    if guest != handover::Guest::Memfd {
        cmd.arg(guest.name());
    }
    let out = cmd
        .output()
        .map_err(|e| format!("blackout child {}: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(format!(
            "blackout child {} failed: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("blackout child output: {e}"))
}

/// The run whose phases are the medians of `runs`' (each phase on its own).
pub(super) fn median_blackout(runs: &[handover::Blackout]) -> handover::Blackout {
    let med = |f: fn(&handover::Blackout) -> f64| {
        measure::median(&runs.iter().map(f).collect::<Vec<_>>())
    };
    let mut b = runs[runs.len() / 2].clone();
    b.freeze_kexec_ms = med(|b| b.freeze_kexec_ms);
    b.boot_ms = med(|b| b.boot_ms);
    b.retrieve_ms = med(|b| b.retrieve_ms);
    b.total_ms = med(|b| b.total_ms);
    b.peak_rss = runs.iter().map(|b| b.peak_rss).max().unwrap_or(0);
    b
}

pub(super) fn blackout(o: &Opts) -> Result<Vec<Row>, String> {
    use handover::Guest;
    let mut rows = Vec::new();
    let touched = 1024u64;
    let me = exe()?;
    let runs = if o.quick { 1 } else { 3 };
    // The same machine with 4 KiB of guest memory: what the sessions and files cost alone,
    // so each row can show the share of its blackout that grows with guest memory.
    let fixed = median_blackout(
        &(0..runs)
            .map(|_| blackout_child(&me, Guest::Memfd, 1, 1))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let mut machines = vec![(
        "4GiB",
        Guest::Memfd,
        4u64 << 18,
        "4 GiB memfd, 4 KiB folios",
    )];
    if !o.quick {
        machines.push((
            "16GiB",
            Guest::Memfd,
            16 << 18,
            "16 GiB memfd, 4 KiB folios",
        ));
    }
    machines.push((
        "64GiB-hugetlb",
        Guest::Hugetlb,
        64 << 9,
        "64 GiB HugeTLB memfd (huge-memfd-v1), 2 MiB folios, HugeTLB pools as upstream's FLB",
    ));
    for (tag, guest, folios, desc) in machines {
        // Alternating with the older commit's child, when given, for the memfd machine it
        // knows: the phases compared come from the same run.
        let old_exe = o
            .baseline
            .as_ref()
            .filter(|_| guest == Guest::Memfd && tag == "4GiB");
        let mut new_runs = Vec::new();
        let mut old_runs = Vec::new();
        for _ in 0..runs {
            new_runs.push(blackout_child(&me, guest, folios, touched)?);
            if let Some((exe, _)) = old_exe {
                old_runs.push(blackout_child(exe, guest, folios, touched)?);
            }
        }
        let b = median_blackout(&new_runs);
        let old = (!old_runs.is_empty()).then(|| median_blackout(&old_runs));
        let old_label = old_exe.map(|(_, l)| format!("commit {l}"));
        let what = format!(
            "{desc} ({} folios, {touched} pages written and checked) + {} sessions / {} files; median of {runs} runs",
            b.folios, b.sessions, b.files
        );
        let spec = |name: &str, what: String, unit, target| RowSpec {
            id: "blackout",
            name: format!("blackout/{tag}/{name}"),
            what,
            unit,
            method: "wall",
            target,
            samples: runs as u64,
        };
        let vs_old = |f: fn(&handover::Blackout) -> f64| {
            old.as_ref()
                .zip(old_label.as_deref())
                .map(|(o, l)| (l, f(o)))
        };
        rows.push(row(
            spec(
                "total",
                format!("{what}: freeze -> kexec -> boot -> retrieve every session and file"),
                "ms",
                Target::None,
            ),
            b.total_ms,
            vs_old(|b| b.total_ms),
        ));
        rows.push(row(
            spec(
                "freeze_kexec",
                "reboot(): freeze, serialize, KHO handover".into(),
                "ms",
                Target::None,
            ),
            b.freeze_kexec_ms,
            vs_old(|b| b.freeze_kexec_ms),
        ));
        rows.push(row(
            spec(
                "boot",
                "next kernel's KHO + LUO boot".into(),
                "ms",
                Target::None,
            ),
            b.boot_ms,
            vs_old(|b| b.boot_ms),
        ));
        rows.push(row(
            spec(
                "retrieve",
                "open /dev/liveupdate, retrieve every session and file".into(),
                "ms",
                if old.is_some() {
                    Target::MaxRatio(0.25)
                } else {
                    Target::None
                },
            ),
            b.retrieve_ms,
            vs_old(|b| b.retrieve_ms),
        ));
        let grows = (b.total_ms - fixed.total_ms).max(0.0);
        rows.push(row(
            spec(
                "grows_with_memory",
                format!(
                    "share of `total` the guest memory adds: total minus that of the same machine with 4 KiB of guest memory ({:.1} ms: freeze_kexec {:.1}, boot {:.1}, retrieve {:.1}), over total; {:.2} ms per GiB",
                    fixed.total_ms,
                    fixed.freeze_kexec_ms,
                    fixed.boot_ms,
                    fixed.retrieve_ms,
                    grows / ((folios << (12 + guest.order())) as f64 / f64::from(1u32 << 30))
                ),
                "%",
                Target::None,
            ),
            100.0 * grows / b.total_ms,
            None,
        ));
        let bytes = folios << (12 + guest.order());
        rows.push(row(
            spec(
                "bytes_copied",
                format!(
                    "bytes of file data copied (core counter; handler copied/zeroed {} folios; retrieved guest memory is the same memory: {})",
                    b.handler_folios_copied,
                    if b.same_host_file { "yes" } else { "NO" }
                ),
                "bytes",
                Target::MaxValue(0.0),
            ),
            (b.file_bytes_copied + b.handler_folios_copied * 4096) as f64
                + if b.same_host_file { 0.0 } else { bytes as f64 },
            None,
        ));
        let mib = |x: u64| x as f64 / (1024.0 * 1024.0);
        rows.push(row(
            spec(
                "peak_rss",
                format!(
                    "peak RSS (VmHWM) of the run, vs the KHO arena handed over (folio array, LUO blocks, a page per test file: {:.1} MiB, of which {:.1} MiB of records and entries) + touched guest pages {:.1} MiB; guest memory {} MiB; RSS at start {:.1} MiB, peak before reboot() {:.1} MiB",
                    mib(b.arena_bytes),
                    mib(b.metadata_bytes),
                    mib(b.touched_pages * 4096),
                    bytes >> 20,
                    mib(b.start_rss),
                    mib(b.peak_rss_before_kexec)
                ),
                "MiB",
                Target::None,
            ),
            mib(b.peak_rss),
            Some(("arena+touched", mib(b.arena_bytes + b.touched_pages * 4096))),
        ));
    }
    Ok(rows)
}

pub(super) fn median_ms(runs: usize, mut f: impl FnMut()) -> (f64, u64) {
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
