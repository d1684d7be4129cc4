// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The compatibility matrix: can kernel A live-update into kernel B?
//!
//! Decided per handed-over component from what A *writes* (its version's
//! identity and required feature bits) and what B *reads* (the versions it
//! accepts and the feature bits each reader knows) — so a kernel carrying
//! readers of older versions shows up as able to take them. Cells name their
//! kernels with the view (`luo:7.3`, `upstream:7.3`), as the diff does.

use serde::Serialize;

use super::KernelSet;

/// Why a component can or cannot cross, as a stable ID (the legend of the HTML page lists
/// them with what each means).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Rule {
    /// Unversioned shared ABI with the same layout on both sides.
    SameLayout,
    /// The new kernel has a reader for the version the old one writes.
    VersionRead,
    /// Unversioned shared ABI whose layout differs.
    UnversionedLayoutChanged,
    /// The new kernel has no reader of the component at all.
    NoReader,
    /// The new kernel reads other versions of the component, not the one written.
    VersionNotRead,
    /// The version is read, but it requires feature bits the reader does not know.
    FeaturesUnknown,
}

impl Rule {
    /// Every rule, in legend order.
    pub const ALL: [Rule; 6] = [
        Rule::VersionRead,
        Rule::SameLayout,
        Rule::NoReader,
        Rule::VersionNotRead,
        Rule::FeaturesUnknown,
        Rule::UnversionedLayoutChanged,
    ];

    /// The ID as printed.
    pub fn id(self) -> &'static str {
        match self {
            Rule::SameLayout => "SAME_LAYOUT",
            Rule::VersionRead => "VERSION_READ",
            Rule::UnversionedLayoutChanged => "UNVERSIONED_LAYOUT_CHANGED",
            Rule::NoReader => "NO_READER",
            Rule::VersionNotRead => "VERSION_NOT_READ",
            Rule::FeaturesUnknown => "FEATURES_UNKNOWN",
        }
    }

    /// Whether the component crosses under this rule.
    pub fn ok(self) -> bool {
        matches!(self, Rule::SameLayout | Rule::VersionRead)
    }

    /// What the rule means, for the legend.
    pub fn meaning(self) -> &'static str {
        match self {
            Rule::VersionRead => "the new kernel reads the version the old one writes",
            Rule::SameLayout => "unversioned shared ABI, byte for byte the same on both sides",
            Rule::NoReader => "the new kernel has no reader of this component at all",
            Rule::VersionNotRead => {
                "the new kernel reads other versions of this component, not the one written"
            }
            Rule::FeaturesUnknown => {
                "the version is read, but it requires feature bits the reader does not know"
            }
            Rule::UnversionedLayoutChanged => {
                "unversioned shared ABI whose layout differs: it needs a version"
            }
        }
    }
}

/// One component's verdict for one pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentVerdict {
    /// Component.
    pub component: String,
    /// Whether B can read what A writes.
    pub ok: bool,
    /// The rule that decided.
    pub rule: Rule,
    /// Why (always given).
    pub reason: String,
}

/// One cell: A → B.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// Old kernel.
    pub from: String,
    /// New kernel.
    pub to: String,
    /// Every component readable.
    pub ok: bool,
    /// Per component.
    pub components: Vec<ComponentVerdict>,
}

impl Cell {
    /// The components that block this update.
    pub fn blocking(&self) -> impl Iterator<Item = &ComponentVerdict> {
        self.components.iter().filter(|v| !v.ok)
    }
}

/// What a rendering of the matrix describes: when it was made and from which tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct About {
    /// UTC date it was made (`YYYY-MM-DD`).
    pub date: String,
    /// The tree the spec came from (`git describe --always --dirty`), or why unknown.
    pub build: String,
    /// The luo version that made it.
    pub luo: String,
}

impl About {
    /// Today, and the tree at `root` as git describes it.
    pub fn of_tree(root: &std::path::Path) -> About {
        let build = std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["describe", "--always", "--dirty", "--abbrev=12"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown (not a git checkout)".into());
        let days = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 86_400);
        About {
            date: crate::output::civil_date(days),
            build,
            luo: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// The verdict for A → B.
pub fn cell(a: &KernelSet, b: &KernelSet) -> Cell {
    let (al, bl) = (a.label(), b.label());
    let mut components = Vec::new();
    for (name, w) in a.components.iter().filter(|(_, s)| s.abi == "kho") {
        let written = w.identity.join(", ");
        let (rule, reason) = match b.components.get(name) {
            // Unversioned shared ABI (kexec_handover.h): both sides must agree byte for byte.
            Some(r) if w.version.is_none() => {
                if r.structs
                    .iter()
                    .map(|s| &s.layouts)
                    .eq(w.structs.iter().map(|s| &s.layouts))
                {
                    (
                        Rule::SameLayout,
                        format!("unversioned; the same layout in `{}` and `{}`", al, bl),
                    )
                } else {
                    (
                        Rule::UnversionedLayoutChanged,
                        format!(
                            "unversioned, but its layout differs between `{}` and `{}`",
                            al, bl
                        ),
                    )
                }
            }
            None => (
                Rule::NoReader,
                format!(
                    "`{}` has no `{name}` reader; `{}` writes `{written}`",
                    bl, al
                ),
            ),
            Some(r) => match r.reads.iter().find(|rd| rd.identity == w.identity) {
                Some(rd) => {
                    let unknown = match (&w.features, rd.known_features) {
                        (Some(f), Some(known)) => f.required & !known,
                        _ => 0,
                    };
                    if unknown != 0 {
                        (
                            Rule::FeaturesUnknown,
                            format!(
                                "`{written}` requires feature bits {unknown:#x} that `{bl}` does not know"
                            ),
                        )
                    } else {
                        (
                            Rule::VersionRead,
                            format!("`{}` reads `{written}` (version `{}`)", bl, rd.version),
                        )
                    }
                }
                None => {
                    let reads: Vec<String> = r
                        .reads
                        .iter()
                        .map(|rd| format!("`{}`", rd.identity.join(", ")))
                        .collect();
                    let reads = if reads.is_empty() {
                        "nothing".to_string()
                    } else {
                        reads.join(" or ")
                    };
                    (
                        Rule::VersionNotRead,
                        format!("`{}` writes `{written}`; `{}` reads {reads}", al, bl),
                    )
                }
            },
        };
        components.push(ComponentVerdict {
            component: name.clone(),
            ok: rule.ok(),
            rule,
            reason,
        });
    }
    Cell {
        from: al,
        to: bl,
        ok: components.iter().all(|c| c.ok),
        components,
    }
}

/// Every pair, rows = from, columns = to.
pub fn matrix(sets: &[KernelSet]) -> Vec<Vec<Cell>> {
    sets.iter()
        .map(|a| sets.iter().map(|b| cell(a, b)).collect())
        .collect()
}

/// The matrix as a terminal table plus the blocking components of every red cell.
pub fn render_text(sets: &[KernelSet], m: &[Vec<Cell>], about: &About) -> String {
    let width = sets
        .iter()
        .map(|s| s.label().len())
        .max()
        .unwrap_or(4)
        .max(7);
    let mut out = format!(
        "live-update compatibility, {} (luo {}, tree {}); row: from, column: to\n",
        about.date, about.luo, about.build
    );
    out.push_str(&format!("{:<width$}  ", "from\\to"));
    for s in sets {
        out.push_str(&format!("{:<width$}  ", s.label()));
    }
    out.push('\n');
    for row in m {
        out.push_str(&format!(
            "{:<width$}  ",
            row.first().map_or("", |c| c.from.as_str())
        ));
        for c in row {
            out.push_str(&format!("{:<width$}  ", if c.ok { "ok" } else { "NO" }));
        }
        out.push('\n');
    }
    for c in m.iter().flatten().filter(|c| !c.ok) {
        out.push_str(&format!("\n{} -> {}:\n", c.from, c.to));
        for v in c.blocking() {
            out.push_str(&format!(
                "  {} {}: {}\n",
                v.component,
                v.rule.id(),
                v.reason
            ));
        }
    }
    out
}

/// The matrix as one JSON document: what it describes, the kernels, every cell.
pub fn to_json(sets: &[KernelSet], m: &[Vec<Cell>], about: &About) -> serde_json::Value {
    serde_json::json!({
        "about": about,
        "kernels": sets.iter().map(KernelSet::label).collect::<Vec<_>>(),
        "cells": m,
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A reason as HTML: escaped, with its `quoted` names set as code.
fn reason_html(s: &str) -> String {
    esc(s)
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{part}</code>")
            } else {
                part.to_string()
            }
        })
        .collect()
}

/// The stylesheet of the HTML page.
const STYLE: &str = "\
body { font-family: system-ui, sans-serif; margin: 20px 24px; color: #1b1b1b; }
h1 { font-size: 20px; margin: 0 0 2px; }
h2 { font-size: 15px; margin: 22px 0 6px; }
p.about { color: #555; margin: 0 0 10px; font-size: 13px; }
table { border-collapse: collapse; }
th, td { border: 1px solid #aaa; padding: 4px 7px; vertical-align: top; font-size: 13px; }
th { background: #eee; text-align: left; }
table.grid { table-layout: fixed; width: 100%; }
table.grid th.corner { width: 84px; }
td.ok { background: #d4f4d4; }
td.bad { background: #f8d0d0; }
td .verdict { font-weight: bold; }
td.ok .verdict { color: #17601a; }
td.bad .verdict { color: #9b1111; }
td .count { color: #555; font-size: 11px; margin-left: 6px; }
ul.block { margin: 3px 0 0; padding-left: 14px; }
ul.block li { margin: 3px 0; }
code { font-size: 11px; }
code.rule { font-size: 10.5px; background: #ffffffb0; border-radius: 3px; padding: 0 3px; }
span.why { display: block; color: #3a3a3a; font-size: 11px; }
span.why code { font-size: 10.5px; color: #222; }
table.legend { margin-bottom: 4px; }
table.legend td, table.legend th { font-size: 12px; border: none; padding: 2px 10px 2px 0; background: none; }
span.swatch { display: inline-block; width: 13px; height: 13px; border: 1px solid #999; vertical-align: -2px; margin-right: 4px; }
#components td { text-align: center; }
";

/// The matrix as a standalone HTML page: a green or red cell per pair with the blocking
/// components, their rules and reasons written in every red cell; the same per component;
/// a legend; the date and the tree it describes.
pub fn render_html(sets: &[KernelSet], m: &[Vec<Cell>], about: &About) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>luo live-update compatibility matrix</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n\
         <h1>Can kernel A (row) live-update into kernel B (column)?</h1>\n\
         <p class=\"about\" id=\"about\">Made <time>{}</time> by luo {} from tree <code>{}</code>: \
         what each kernel writes and reads in its layout snapshots.</p>\n",
        esc(&about.date),
        esc(&about.luo),
        esc(&about.build)
    );
    // Legend: the colours, then every rule in two columns.
    out.push_str(
        "<table class=\"legend\" id=\"legend\">\n<tr><th colspan=\"4\">Legend</th></tr>\n\
         <tr><td colspan=\"2\"><span class=\"swatch\" style=\"background:#d4f4d4\"></span><b>yes</b>: \
         B reads every component A writes</td>\
         <td colspan=\"2\"><span class=\"swatch\" style=\"background:#f8d0d0\"></span><b>no</b>: \
         each blocking <b>component</b> with its <code class=\"rule\">RULE</code> and why</td></tr>\n",
    );
    let half = Rule::ALL.len().div_ceil(2);
    for i in 0..half {
        out.push_str("<tr>");
        for r in [Rule::ALL.get(i), Rule::ALL.get(i + half)]
            .into_iter()
            .flatten()
        {
            out.push_str(&format!(
                "<td><code class=\"rule\">{}</code></td><td>{} ({})</td>",
                r.id(),
                esc(r.meaning()),
                if r.ok() { "crosses" } else { "blocks" }
            ));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");

    out.push_str(
        "<h2>By kernel</h2>\n<table id=\"matrix\" class=\"grid\">\n<tr><th class=\"corner\">from \\ to</th>",
    );
    for s in sets {
        out.push_str(&format!("<th>{}</th>", esc(&s.label())));
    }
    out.push_str("</tr>\n");
    for row in m {
        out.push_str(&format!(
            "<tr><th>{}</th>",
            esc(row.first().map_or("", |c| c.from.as_str()))
        ));
        for c in row {
            let all: Vec<String> = c
                .components
                .iter()
                .map(|v| format!("{} {}: {}", v.component, v.rule.id(), v.reason))
                .collect();
            let body = if c.ok {
                format!(
                    "<span class=\"verdict\">yes</span><span class=\"count\">{} components read</span>",
                    c.components.len()
                )
            } else {
                let items: String = c
                    .blocking()
                    .map(|v| {
                        format!(
                            "<li class=\"blocker\" data-component=\"{}\" data-rule=\"{}\"><b>{}</b> \
                             <code class=\"rule\">{}</code><span class=\"why\">{}</span></li>",
                            esc(&v.component),
                            v.rule.id(),
                            esc(&v.component),
                            v.rule.id(),
                            reason_html(&v.reason)
                        )
                    })
                    .collect();
                format!("<span class=\"verdict\">no</span><ul class=\"block\">{items}</ul>")
            };
            out.push_str(&format!(
                "<td class=\"{}\" data-from=\"{}\" data-to=\"{}\" data-ok=\"{}\" title=\"{}\">{body}</td>",
                if c.ok { "ok" } else { "bad" },
                esc(&c.from),
                esc(&c.to),
                c.ok,
                esc(&all.join("\n")),
            ));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");

    // Per component: which pairs it allows, and under which rule it blocks the others.
    let mut components: Vec<&str> = m
        .iter()
        .flatten()
        .flat_map(|c| c.components.iter().map(|v| v.component.as_str()))
        .collect();
    components.sort_unstable();
    components.dedup();
    out.push_str(
        "<h2>By component</h2>\n<table id=\"components\" class=\"grid\">\n<tr><th class=\"corner\">component</th><th class=\"corner\">from \\ to</th>",
    );
    for s in sets {
        out.push_str(&format!("<th>{}</th>", esc(&s.label())));
    }
    out.push_str("</tr>\n");
    for comp in components {
        let rows: Vec<&Vec<Cell>> = m
            .iter()
            .filter(|row| {
                row.iter()
                    .any(|c| c.components.iter().any(|v| v.component == comp))
            })
            .collect();
        for (i, row) in rows.iter().enumerate() {
            out.push_str("<tr>");
            if i == 0 {
                out.push_str(&format!(
                    "<th rowspan=\"{}\">{}</th>",
                    rows.len(),
                    esc(comp)
                ));
            }
            out.push_str(&format!(
                "<th>{}</th>",
                esc(row.first().map_or("", |c| c.from.as_str()))
            ));
            for c in row.iter() {
                match c.components.iter().find(|v| v.component == comp) {
                    Some(v) => out.push_str(&format!(
                        "<td class=\"{}\" data-component=\"{}\" data-from=\"{}\" data-to=\"{}\" title=\"{}\">\
                         <code class=\"rule\">{}</code></td>",
                        if v.ok { "ok" } else { "bad" },
                        esc(comp),
                        esc(&c.from),
                        esc(&c.to),
                        esc(&v.reason),
                        v.rule.id()
                    )),
                    None => out.push_str("<td></td>"),
                }
            }
            out.push_str("</tr>\n");
        }
    }
    out.push_str("</table>\n</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(crate::output::civil_date(0), "1970-01-01");
        assert_eq!(crate::output::civil_date(11_016), "2000-02-29");
        assert_eq!(crate::output::civil_date(20_795), "2026-12-08");
    }
}
