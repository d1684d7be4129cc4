// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The generator's intermediate representation (cbindgen's `ir/`): what the backends render,
//! built once from the checked spec before any of them runs.
//!
//! - [`LayoutTable`]: the layout of every struct of the spec on every target, computed here
//!   with the layout engine; the backends only look layouts up, so a header, a snapshot and a
//!   Rust assertion print numbers from the same table.
//! - [`KernelIr`]: for each kernel, where its headers go and the component versions it shows
//!   (the version it writes of each component it has), listed once for every backend.
//!
//! Constant expressions are evaluated through the engine ([`Ir::engine`]): their value
//! depends on the scope and target they are read in, not on a struct.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::layout::{LayoutError, Layouts, StructLayout, Target};
use crate::model::{Items, Kernel, Origin, Scope, Spec};

/// Everything the backends render.
pub struct Ir<'a> {
    /// The checked spec.
    pub spec: &'a Spec,
    /// Every struct's layout on every target.
    pub layouts: LayoutTable,
    /// The layout engine, for constant expressions.
    pub engine: &'a Layouts,
    /// Each kernel of the spec, in spec order.
    pub kernels: Vec<KernelIr<'a>>,
}

/// One kernel's view of the spec.
pub struct KernelIr<'a> {
    /// The kernel.
    pub kernel: &'a Kernel,
    /// Its header tree: `generated/include` for the default kernel, else
    /// `generated/kernels/<name>/include`.
    pub include: PathBuf,
    /// The component versions its headers and snapshots show, in spec order.
    pub units: Vec<Scope<'a>>,
}

impl<'a> Ir<'a> {
    /// Builds the IR of a spec without errors.
    pub fn build(spec: &'a Spec, engine: &'a Layouts) -> Ir<'a> {
        let kernels = spec
            .kernels
            .iter()
            .map(|kernel| KernelIr {
                kernel,
                include: if kernel.default {
                    PathBuf::from("generated/include")
                } else {
                    Path::new("generated/kernels")
                        .join(kernel.dir_name())
                        .join("include")
                },
                units: spec
                    .components
                    .iter()
                    .enumerate()
                    .filter_map(|(comp, c)| {
                        let ver = spec.rendered_version(kernel, c)?;
                        Some(Scope {
                            spec,
                            origin: Origin { comp, ver },
                        })
                    })
                    .collect(),
            })
            .collect();
        Ir {
            spec,
            layouts: LayoutTable::compute(spec, engine),
            engine,
            kernels,
        }
    }
}

/// Every item set of the spec with its scope: each component's common items, then each of
/// its versions, in spec order.
pub fn item_sets(spec: &Spec) -> impl Iterator<Item = (Scope<'_>, &Items)> {
    spec.components
        .iter()
        .enumerate()
        .flat_map(move |(comp, c)| {
            let common = (
                Scope {
                    spec,
                    origin: Origin { comp, ver: None },
                },
                &c.common,
            );
            let versions = c.versions.iter().enumerate().map(move |(ver, v)| {
                (
                    Scope {
                        spec,
                        origin: Origin {
                            comp,
                            ver: Some(ver),
                        },
                    },
                    &v.items,
                )
            });
            std::iter::once(common).chain(versions)
        })
}

/// The layout of every struct of a spec on every target, keyed by where the struct is
/// defined (a version may define a struct of the same name as another's).
pub struct LayoutTable {
    map: HashMap<(Origin, String, Target), Result<StructLayout, LayoutError>>,
}

impl LayoutTable {
    /// Lays out every struct of `spec` on every target.
    pub fn compute(spec: &Spec, engine: &Layouts) -> LayoutTable {
        let mut map = HashMap::new();
        for (scope, items) in item_sets(spec) {
            for s in &items.structs {
                for target in Target::ALL {
                    let layout = engine.layout(scope, &s.name, target);
                    map.insert((scope.origin, s.name.clone(), target), layout);
                }
            }
        }
        LayoutTable { map }
    }

    /// The layout of struct `name` as seen from `scope`, on `target`.
    pub fn get(
        &self,
        scope: Scope<'_>,
        name: &str,
        target: Target,
    ) -> Result<StructLayout, LayoutError> {
        let unknown = || LayoutError::UnknownType {
            strukt: name.into(),
            field: String::new(),
            ty: name.into(),
        };
        let (origin, _) = scope.find_struct(name).ok_or_else(unknown)?;
        self.map
            .get(&(origin, name.to_string(), target))
            .cloned()
            .unwrap_or_else(|| Err(unknown()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::load_checked;

    #[test]
    fn the_table_holds_what_the_engine_computes() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec");
        let (spec, engine, diags) = load_checked(&root);
        assert!(!diags.has_errors());
        let ir = Ir::build(&spec, &engine);
        let mut checked = 0;
        for (scope, items) in item_sets(&spec) {
            for s in &items.structs {
                for t in Target::ALL {
                    assert_eq!(
                        ir.layouts.get(scope, &s.name, t),
                        engine.layout(scope, &s.name, t),
                        "{} on {t}",
                        s.name
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 100, "{checked}");
        assert!(
            ir.layouts
                .get(ir.kernels[0].units[0], "no_such_struct", Target::PRIMARY)
                .is_err()
        );
        // Every kernel shows at least the components without versions.
        assert!(ir.kernels.iter().all(|k| !k.units.is_empty()));
    }
}
