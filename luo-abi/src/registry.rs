// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Where Rust handlers are registered: a kernel, as the code that builds a machine sees it.
//!
//! Upstream, a handler registers itself from its module's init (`liveupdate_register_file_handler`,
//! `liveupdate_register_flb`, `liveupdate_register_subsystem`). Here the LUO core runs several
//! kernels in one process, so the kernel is explicit: a handler crate offers functions generic
//! over [`Registry`] ("register the memfd handler of this kernel version"), and the layer that
//! builds a machine calls them with the kernel it booted. The core implements the trait; it
//! keeps every registration alive as long as the kernel.

use alloc::sync::Arc;

use crate::errno::Result;
use crate::global::{FlbCell, FlbState, Subsystem, SubsystemCell};
use crate::handler::{FileHandler, Registration};
use crate::host::LuoHost;

/// A kernel Rust handlers, FLBs and subsystems register with.
pub trait Registry {
    /// The host the kernel's handlers, FLBs and subsystems are built with.
    fn host(&self) -> Arc<dyn LuoHost>;

    /// Registers the handler's writer and a reader for each version in `reads` (a subset of
    /// its `reads = [...]`), each with the handler-scoped state and the FLBs it declared; the
    /// kernel owns the registration from then on. `-EINVAL` for a version the handler cannot
    /// read, `-EEXIST` for a compatible string already registered.
    fn register_handler_reading<H: FileHandler>(
        &self,
        reg: Registration<H>,
        reads: &[&str],
    ) -> Result;

    /// [`Registry::register_handler_reading`] with every version the handler reads.
    fn register_handler<H: FileHandler>(&self, reg: Registration<H>) -> Result {
        self.register_handler_reading(reg, H::READS)
    }

    /// Registers a subsystem; its `boot` runs now if the previous kernel handed data over for
    /// it. The kernel keeps the cell alive.
    fn register_subsystem<S: Subsystem>(&self, cell: &Arc<SubsystemCell<S>>) -> Result;

    /// The format of `component` (a spec component: `"memfd"`) this kernel writes, as its
    /// compatible string (or versionless name), per the kernel's profile
    /// (`spec/kernels/*.toml`): what a handler with several versions registers as its writer.
    /// `None` when the kernel does not have the component.
    fn writes(&self, component: &str) -> Option<&'static str> {
        let _ = component;
        None
    }

    /// The formats of `component` this kernel reads, the one written first.
    fn reads(&self, component: &str) -> &'static [&'static str] {
        let _ = component;
        &[]
    }

    /// `CONFIG_LIVEUPDATE_TEST`: handlers registered at boot link upstream's test FLBs.
    fn test_config(&self) -> bool {
        false
    }

    /// A new FLB run by this kernel; a handler links it by naming it in `flbs = [...]` and
    /// getting the cell in its globals.
    fn new_flb<S: FlbState>(&self, flb: S) -> Arc<FlbCell<S>> {
        FlbCell::new(flb, self.host())
    }

    /// A new subsystem run by this kernel, to register with [`Registry::register_subsystem`].
    fn new_subsystem<S: Subsystem>(&self, sub: S) -> Arc<SubsystemCell<S>> {
        SubsystemCell::new(sub, self.host())
    }
}
