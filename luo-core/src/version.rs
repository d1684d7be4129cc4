//! The kernel a booted [`Kernel`](crate::Kernel) plays, chosen at run time
//! ([`BootOptions::version`](crate::BootOptions::version)): which handover format it writes
//! and which it reads (`spec/kernels/*.toml`).
//!
//! Upstream kernels read exactly the version they write. Ours read older versions too, so a
//! live update 6.19 → 7.3 → next works; the other direction is refused at boot with an
//! [`ImageError`](crate::ImageError) naming the component (upstream: `panic()`).

use std::fmt;
use std::str::FromStr;

use luo_handlers::memfd::Version as Memfd;

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

    /// The memfd version written.
    pub fn memfd_writes(self) -> Memfd {
        match self {
            Self::V6_19 | Self::V7_0 => Memfd::V1,
            Self::V7_3 => Memfd::V2,
            Self::Next => Memfd::Next,
        }
    }

    /// The memfd versions read.
    pub fn memfd_reads(self) -> &'static [Memfd] {
        match self {
            Self::V6_19 | Self::V7_0 => &[Memfd::V1],
            Self::V7_3 => &[Memfd::V2, Memfd::V1],
            Self::Next => &[Memfd::Next, Memfd::V2, Memfd::V1],
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
