//! The compatibility matrix: can kernel A live-update into kernel B?
//!
//! Decided per handed-over component from what A *writes* (its version's
//! identity and required feature bits) and what B *reads* (the versions it
//! accepts and the feature bits each reader knows) — so a kernel carrying
//! readers of older versions shows up as able to take them. Cells name their
//! kernels with the view (`luo:7.3`, `upstream:7.3`), as the diff does.

use serde::Serialize;

use super::KernelSet;

/// One component's verdict for one pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentVerdict {
    /// Component.
    pub component: String,
    /// Whether B can read what A writes.
    pub ok: bool,
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

/// The verdict for A → B.
pub fn cell(a: &KernelSet, b: &KernelSet) -> Cell {
    let (al, bl) = (a.label(), b.label());
    let mut components = Vec::new();
    for (name, w) in a.components.iter().filter(|(_, s)| s.abi == "kho") {
        let written = w.identity.join(", ");
        let verdict = match b.components.get(name) {
            // Unversioned shared ABI (kexec_handover.h): both sides must agree byte for byte.
            Some(r) if w.version.is_none() => {
                if r.structs
                    .iter()
                    .map(|s| &s.layouts)
                    .eq(w.structs.iter().map(|s| &s.layouts))
                {
                    (
                        true,
                        format!("unversioned; the same layout in `{}` and `{}`", al, bl),
                    )
                } else {
                    (
                        false,
                        format!(
                            "unversioned, but its layout differs between `{}` and `{}`",
                            al, bl
                        ),
                    )
                }
            }
            None => (
                false,
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
                            false,
                            format!(
                                "`{written}` requires feature bits {unknown:#x} that `{bl}` does not know"
                            ),
                        )
                    } else {
                        (
                            true,
                            format!("`{bl}` reads `{written}` (version `{}`)", rd.version),
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
                        false,
                        format!("`{}` writes `{written}`; `{}` reads {reads}", al, bl),
                    )
                }
            },
        };
        components.push(ComponentVerdict {
            component: name.clone(),
            ok: verdict.0,
            reason: verdict.1,
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

/// The matrix as a terminal table plus the reasons of every red cell.
pub fn render_text(sets: &[KernelSet], m: &[Vec<Cell>]) -> String {
    let width = sets
        .iter()
        .map(|s| s.label().len())
        .max()
        .unwrap_or(4)
        .max(7);
    let mut out = format!("{:<width$}  ", "from\\to");
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
    out.push('\n');
    for c in m.iter().flatten().filter(|c| !c.ok) {
        out.push_str(&format!("{} -> {}:\n", c.from, c.to));
        for v in c.components.iter().filter(|v| !v.ok) {
            out.push_str(&format!("  {}: {}\n", v.component, v.reason));
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The matrix as a standalone HTML page: green and red cells, the reasons
/// on hover (`title`) and on click (`<details>`).
pub fn render_html(sets: &[KernelSet], m: &[Vec<Cell>]) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>luo live-update compatibility matrix</title>\n<style>\n\
         body { font-family: sans-serif; }\ntable { border-collapse: collapse; }\nth, td { border: 1px solid #888; padding: 4px 8px; vertical-align: top; }\n\
         td.ok { background: #c8f0c8; }\ntd.bad { background: #f4c4c4; }\nsummary { cursor: pointer; font-weight: bold; }\n</style>\n</head>\n<body>\n\
         <h1>Can kernel A (row) live-update into kernel B (column)?</h1>\n<table id=\"matrix\">\n<tr><th>from \\ to</th>",
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
            let reasons: Vec<String> = c
                .components
                .iter()
                .map(|v| format!("{}: {}", v.component, v.reason))
                .collect();
            out.push_str(&format!(
                "<td class=\"{}\" data-from=\"{}\" data-to=\"{}\" data-ok=\"{}\" title=\"{}\"><details><summary>{}</summary><ul>{}</ul></details></td>",
                if c.ok { "ok" } else { "bad" },
                esc(&c.from),
                esc(&c.to),
                c.ok,
                esc(&reasons.join("\n")),
                if c.ok { "yes" } else { "no" },
                reasons.iter().map(|r| format!("<li>{}</li>", esc(r))).collect::<String>()
            ));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n</body>\n</html>\n");
    out
}
