// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Reports of a diff: text for people, JSON for tools, and the exit code
//! (0 compatible, 1 breaking, 2 usage or input error).

use super::{ComponentDiff, Severity};

/// Exit code of a diff: 1 when any finding is breaking or an error.
pub fn exit_code(diffs: &[ComponentDiff]) -> u8 {
    u8::from(
        diffs
            .iter()
            .flat_map(|d| &d.findings)
            .any(|f| f.severity >= Severity::Breaking),
    )
}

/// The verdict word for one component.
pub fn verdict(d: &ComponentDiff) -> &'static str {
    match d.findings.iter().map(|f| f.severity).max() {
        None => "unchanged",
        Some(Severity::Note | Severity::Compatible) => "compatible",
        Some(Severity::Breaking) => "BREAKING",
        Some(Severity::Error) => "ERROR",
    }
}

/// A readable report: per component, every finding with its rule ID, what
/// changed (old → new) and the fix.
pub fn render_text(diffs: &[ComponentDiff]) -> String {
    let mut out = String::new();
    for d in diffs {
        out.push_str(&format!(
            "{} ({} -> {}): {}\n",
            d.component,
            d.old_kernel,
            d.new_kernel,
            verdict(d)
        ));
        let mut findings: Vec<_> = d.findings.iter().collect();
        findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
        for f in findings {
            let sev = match f.severity {
                Severity::Note => "note",
                Severity::Compatible => "ok",
                Severity::Breaking => "breaking",
                Severity::Error => "error",
            };
            out.push_str(&format!(
                "  {sev:<8} {:<26} {}: {}\n",
                f.rule, f.subject, f.message
            ));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("           fix: {fix}\n"));
            }
        }
    }
    if let Some(d) = diffs.first() {
        out.push_str(&format!(
            "live update {} -> {}: {}\n",
            d.old_kernel,
            d.new_kernel,
            if super::handover_ok(diffs) {
                "possible"
            } else {
                "NOT possible"
            }
        ));
    }
    let code = exit_code(diffs);
    out.push_str(if code == 0 {
        "result: compatible\n"
    } else {
        "result: BREAKING\n"
    });
    out
}

/// The report as a JSON value.
pub fn to_json(diffs: &[ComponentDiff]) -> serde_json::Value {
    serde_json::json!({
        "compatible": exit_code(diffs) == 0,
        "live_update": super::handover_ok(diffs),
        "components": diffs,
    })
}
