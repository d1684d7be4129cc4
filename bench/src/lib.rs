// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The `luo` benchmark suite: workloads shared by the divan benchmarks in `benches/` and the
//! report command (`cargo run -p luo-bench --release --bin luo-bench-report`), which runs
//! every row, compares each to its baseline in the same run and writes `BENCHMARKS.md` and
//! `target/luo-bench.json`.
//!
//! No timing is asserted in tests: the unit tests here only check that the variants of a row
//! compute the same thing.

pub mod codec;
pub mod compile;
pub mod dispatch;
pub mod global;
pub mod handover;
pub mod luo_gen;
pub mod measure;
pub mod ring;

use std::collections::BTreeMap;

use luo_spec::render::schema::{
    ComponentSnapshot, FieldSnapshot, LayoutSnapshot, MemberSnapshot, StructSnapshot,
};

/// A synthetic KHO component snapshot of `structs` packed structs with
/// `fields` u64 members each. With `changed`, every tenth struct gains a
/// member in the middle (so later members move) — the shape of a real
/// breaking change.
pub fn synthetic_snapshot(structs: usize, fields: usize, changed: bool) -> ComponentSnapshot {
    let structs = (0..structs)
        .map(|s| {
            let grow = changed && s % 10 == 0;
            let mut names: Vec<String> = (0..fields).map(|f| format!("f{f}")).collect();
            if grow {
                names.insert(fields / 2, "inserted".into());
            }
            let members = names
                .iter()
                .map(|n| MemberSnapshot {
                    name: n.clone(),
                    ty: "u64".into(),
                    len: None,
                    bits: None,
                    reserved: false,
                    required: None,
                    dir: None,
                    feature: None,
                })
                .collect();
            let layout = LayoutSnapshot {
                size: 8 * names.len() as u64,
                align: 1,
                fields: names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| FieldSnapshot {
                        name: n.clone(),
                        offset: 8 * i as u64,
                        size: 8,
                        count: 1,
                        bits: None,
                    })
                    .collect(),
            };
            let layouts: BTreeMap<String, LayoutSnapshot> =
                ["x86_64", "i386", "arm64-4k", "arm64-16k", "arm64-64k"]
                    .iter()
                    .map(|t| (t.to_string(), layout.clone()))
                    .collect();
            StructSnapshot {
                name: format!("demo_{s}_ser"),
                packed: true,
                ops: false,
                min_size: None,
                members,
                layouts,
            }
        })
        .collect();
    ComponentSnapshot {
        snapshot_version: luo_spec::render::schema::SNAPSHOT_VERSION,
        kernel: if changed { "new" } else { "old" }.into(),
        component: "demo".into(),
        abi: "kho".into(),
        header: "linux/kho/abi/demo.h".into(),
        version: Some("v1".into()),
        released: false,
        identity: vec!["demo-v1".into()],
        reads: Vec::new(),
        drops: Vec::new(),
        fingerprint: 0,
        compatibles: Vec::new(),
        features: None,
        constants: Vec::new(),
        structs,
        ioctls: Vec::new(),
        fdt: Vec::new(),
    }
}
