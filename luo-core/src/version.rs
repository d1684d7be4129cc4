// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The kernel a booted [`Kernel`](crate::Kernel) plays, chosen at run time
//! ([`BootOptions::version`](crate::BootOptions::version)): which handover format it writes
//! and which it reads (`spec/kernels/*.toml`).
//!
//! Upstream kernels read exactly the version they write. Ours read older versions too, so a
//! live update 6.19 → 7.3 → next works; the other direction is refused at boot with an
//! [`ImageError`](crate::ImageError) naming the component (upstream: `panic()`).

use std::fmt;
use std::str::FromStr;

use luo_generated::memfd::{next, v1, v2};

/// The LUO root formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LuoFormat {
    /// `luo-v1` FDT with `luo-session-v2` (6.19).
    V1,
    /// `luo-v1` FDT with `luo-session-v2` and `luo-flb-v1` (7.0).
    V1Flb,
    /// `luo-v5` raw `luo_ser` with block chains (7.3).
    V5,
    /// Feature-negotiated `luo_ser` (next).
    Next,
}

/// A kernel of the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelVersion {
    /// Linux 6.19.
    V6_19,
    /// Linux 7.0.
    V7_0,
    /// Linux 7.3 (the default).
    #[default]
    V7_3,
    /// The feature-negotiated ABI of the mm tree.
    Next,
}

impl KernelVersion {
    /// Every kernel, oldest first.
    pub const ALL: [KernelVersion; 4] = [Self::V6_19, Self::V7_0, Self::V7_3, Self::Next];

    /// The name used by `spec/kernels` and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Self::V6_19 => "6.19",
            Self::V7_0 => "7.0",
            Self::V7_3 => "7.3",
            Self::Next => "next",
        }
    }

    /// The LUO format written.
    pub fn luo_writes(self) -> LuoFormat {
        match self {
            Self::V6_19 => LuoFormat::V1,
            Self::V7_0 => LuoFormat::V1Flb,
            Self::V7_3 => LuoFormat::V5,
            Self::Next => LuoFormat::Next,
        }
    }

    /// The LUO formats read (the one written first). 6.19 and 7.0 are upstream's, exact
    /// match; 7.3 and next are ours, which also read the older formats.
    pub fn luo_reads(self) -> &'static [LuoFormat] {
        use LuoFormat::*;
        match self {
            Self::V6_19 => &[V1],
            Self::V7_0 => &[V1Flb],
            Self::V7_3 => &[V5, V1Flb, V1],
            Self::Next => &[Next, V5, V1Flb, V1],
        }
    }

    /// The memfd handler's format written: its compatible string (the versionless name of
    /// the feature-negotiated format for next). The core registers no handler itself; the
    /// machine that boots this kernel registers the memfd handler of this version.
    pub fn memfd_writes(self) -> &'static str {
        match self {
            Self::V6_19 | Self::V7_0 => v1::MEMFD_LUO_FH_COMPATIBLE,
            Self::V7_3 => v2::MEMFD_LUO_FH_COMPATIBLE,
            Self::Next => next::MEMFD_LUO_FH_NAME,
        }
    }

    /// The memfd formats read, the one written first.
    pub fn memfd_reads(self) -> &'static [&'static str] {
        const V1: &str = v1::MEMFD_LUO_FH_COMPATIBLE;
        const V2: &str = v2::MEMFD_LUO_FH_COMPATIBLE;
        const NEXT: &str = next::MEMFD_LUO_FH_NAME;
        match self {
            Self::V6_19 | Self::V7_0 => &[V1],
            Self::V7_3 => &[V2, V1],
            Self::Next => &[NEXT, V2, V1],
        }
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KernelVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown kernel {s:?} (6.19, 7.0, 7.3, next)"))
    }
}
