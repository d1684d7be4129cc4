// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Every struct the real 7.2.13 kernel hands over or exposes to userspace
//! (`include/linux/kho/abi/*.h`, `include/uapi/linux/liveupdate.h`), member by member, against
//! the layouts of `generated/include` (the default kernel, 7.3, whose ABI is 7.2's): size,
//! member names in order, bit offsets and bit sizes. The kernel's layouts are facts recorded
//! from its own headers by `tests/upstream/record-layouts.sh` (gcc -g, gdb `ptype /o`) into
//! `tests/upstream/layouts-7.2.13.txt`. All 21 are in `spec/`, the KHO radix tree included.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use luo_spec::layout::{Layouts, Target};
use luo_spec::model::{Origin, Scope};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A member: name, bit offset, bit size.
type Member = (String, u64, u64);

/// `struct -> (size, members)` from the recorded file.
fn recorded() -> BTreeMap<String, (u64, Vec<Member>)> {
    let text = std::fs::read_to_string(root().join("tests/upstream/layouts-7.2.13.txt"))
        .expect("recorded layouts");
    let mut out: BTreeMap<String, (u64, Vec<Member>)> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |s: &str| s.parse::<u64>().unwrap_or_else(|e| panic!("{line}: {e}"));
        match w.as_slice() {
            ["struct", name, size] => out.entry(name.to_string()).or_default().0 = num(size),
            ["member", name, field, off, bits] => out
                .entry(name.to_string())
                .or_default()
                .1
                .push((field.to_string(), num(off), num(bits))),
            _ => panic!("bad line: {line}"),
        }
    }
    out
}

#[test]
fn generated_headers_lay_out_every_7_2_struct_as_the_kernel() {
    let (spec, diags) = luo_spec::model::load(&root().join("spec"));
    assert!(!diags.has_errors());
    let layouts = Layouts::new();
    let k = spec.default_kernel().expect("default kernel");
    let facts = recorded();
    assert_eq!(facts.len(), 21, "structs recorded");
    let mut compared = Vec::new();
    let mut missing = Vec::new();
    let mut failures = Vec::new();
    for (name, (size, members)) in &facts {
        let scope = spec.components.iter().enumerate().find_map(|(ci, comp)| {
            let ver = spec.rendered_version(k, comp)?;
            let own =
                |items: &luo_spec::model::Items| items.structs.iter().any(|s| &s.name == name);
            (own(&comp.common) || ver.is_some_and(|v| own(&comp.versions[v].items))).then_some(
                Scope {
                    spec: &spec,
                    origin: Origin { comp: ci, ver },
                },
            )
        });
        let Some(scope) = scope else {
            missing.push(name.as_str());
            continue;
        };
        let l = layouts
            .layout(scope, name, Target::PRIMARY)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ours: Vec<Member> = l
            .fields
            .iter()
            .map(|f| match f.bits {
                Some((shift, width)) => (
                    f.name.clone(),
                    f.offset * 8 + u64::from(shift),
                    u64::from(width),
                ),
                None => (f.name.clone(), f.offset * 8, f.size * 8),
            })
            .collect();
        if l.size != *size || &ours != members {
            failures.push(format!(
                "struct {name}: kernel {size} bytes {members:?}\n  generated {} bytes {ours:?}",
                l.size
            ));
        }
        compared.push(name.as_str());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        missing.is_empty(),
        "structs of the kernel's ABI not in spec/: {missing:?}"
    );
    assert_eq!(compared.len(), facts.len(), "{compared:?}");
}
