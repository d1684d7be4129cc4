// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The machine layer: which handlers a simulated kernel runs.
//!
//! The LUO core knows no handler, as `kernel/liveupdate/` knows nothing of `mm/memfd_luo.c`:
//! a kernel gets its handlers from the initcalls it boots with
//! ([`BootOptions::initcalls`]). This module is the kernel build every simulated machine
//! plays: the memfd handler of the version the kernel runs (with upstream's test FLBs under
//! `CONFIG_LIVEUPDATE_TEST`). The vm scenario registers the device and VM handlers on top
//! ([`crate::simulate`]).

use luo_core::{BootOptions, Kernel, KernelVersion};

/// The initcalls of a simulated kernel: the memfd handler (upstream: `memfd_luo_init`).
pub fn initcalls() -> Vec<luo_core::kernel::Initcall> {
    vec![luo_handlers::memfd::initcall::<Kernel>]
}

/// How a simulated machine boots kernel `version`: the core's defaults plus [`initcalls`].
pub fn boot_options(version: KernelVersion) -> BootOptions {
    BootOptions {
        version,
        initcalls: initcalls(),
        ..BootOptions::default()
    }
}

/// The defaults with the machine's handlers: [`boot_options`] of the default kernel.
pub fn default_options() -> BootOptions {
    boot_options(KernelVersion::default())
}
