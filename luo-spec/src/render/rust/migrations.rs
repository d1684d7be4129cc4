// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `From` conversions from a version's structs to the next version's (a reader of an
//! older format migrates through them).

use std::fmt::Write as _;

use crate::layout::{Layouts, Target};
use crate::model::{Items, Origin, Scope};
use crate::ty::Ty;

use super::*;

/// `From<old::T> for T` for every struct a version shares with the version
/// it `migrates_from`: members copied by name (bitfields through their
/// accessors), members the old version lacks set to their spec `default`
/// (reserved and padding members to zero). A struct with a member that has
/// neither an old counterpart of the same type nor a default gets no `From`:
/// its migration needs a person.
pub(super) fn write_migrations(m: &mut String, scope: Scope<'_>, items: &Items, layouts: &Layouts) {
    let Some(v) = scope.version() else { return };
    let Some(from) = &v.migrates_from else { return };
    let comp = scope.component();
    let Some(old_vi) = comp.versions.iter().position(|x| x.id == from.name) else {
        return;
    };
    let old_scope = scope.at(Origin {
        comp: scope.origin.comp,
        ver: Some(old_vi),
    });
    for s in &items.structs {
        let Some(old) = comp.versions[old_vi]
            .items
            .structs
            .iter()
            .find(|o| o.name == s.name)
        else {
            continue;
        };
        if !s.fields.iter().all(|f| is_pod(&f.ty, scope))
            || !old.fields.iter().all(|f| is_pod(&f.ty, old_scope))
        {
            continue;
        }
        let mut body = String::new();
        let mut complete = true;
        for f in &s.fields {
            let counterpart = old
                .fields
                .iter()
                .find(|o| o.name == f.name && o.ty == f.ty && o.bits.is_some() == f.bits.is_some());
            let same_len = |o: &crate::model::Field| match (&o.len, &f.len) {
                (None, None) => true,
                (Some((a, _)), Some((b, _))) => {
                    layouts.eval(old_scope, a, Target::PRIMARY).ok()
                        == layouts.eval(scope, b, Target::PRIMARY).ok()
                }
                _ => false,
            };
            match (counterpart.filter(|o| same_len(o)), &f.default) {
                (Some(_), _) if f.bits.is_some() => {
                    let _ = writeln!(
                        body,
                        "        new.set_{}(old.{}());",
                        f.name,
                        rust_ident(&f.name)
                    );
                }
                (Some(_), _) => {
                    let _ = writeln!(body, "        new.{0} = old.{0};", rust_ident(&f.name));
                }
                (None, Some((default, _))) => match layouts.eval(scope, default, Target::PRIMARY) {
                    Ok(value) if f.bits.is_some() => {
                        let _ = writeln!(
                            body,
                            "        new.set_{}({}); // default: {}",
                            f.name,
                            lit(value),
                            default.to_c()
                        );
                    }
                    Ok(value) if matches!(f.ty, Ty::Prim(_)) && f.len.is_none() => {
                        let _ = writeln!(
                            body,
                            "        new.{} = {}; // default: {}",
                            rust_ident(&f.name),
                            lit(value),
                            default.to_c()
                        );
                    }
                    _ => complete = false,
                },
                (None, None) if f.reserved => {
                    let _ = writeln!(body, "        // `{}`: reserved, zero", f.name);
                }
                (None, None) => complete = false,
            }
        }
        if !complete {
            continue;
        }
        let dropped: Vec<&str> = old
            .fields
            .iter()
            .filter(|o| !s.fields.iter().any(|f| f.name == o.name))
            .map(|o| o.name.as_str())
            .collect();
        let _ = write!(
            m,
            "\n/// Migration from `{from}`: members copied by name, new members set to\n/// their spec defaults{}.\nimpl From<super::{from}::{name}> for {name} {{\n    fn from(old: super::{from}::{name}) -> Self {{\n        let mut new: Self = zerocopy::FromZeros::new_zeroed();\n{body}        new\n    }}\n}}\n",
            if dropped.is_empty() {
                String::new()
            } else {
                format!("; `{}` dropped", dropped.join("`, `"))
            },
            from = from.name,
            name = s.name,
        );
    }
}
