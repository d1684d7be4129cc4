//! Vocabulary for handler global state; the runtime (cells, guards, refcounts) comes later.
//!
//! A handler can keep state that is global rather than per file, in one of three forms. `luo`
//! supports all three over one runtime, with typed, generated locking:
//!
//! | form | lifetime | lock | API |
//! |---|---|---|---|
//! | [`GlobalStateForm::FileBound`] (the v4 seed): `global_state_create/restore/destroy` + `liveupdate_fh_global_state_get/put` | per file handler; created on the first preserve, destroyed after the last unpreserve or finish; restored before first access in the new kernel | held from get until put (handler-scoped) | C API of the core |
//! | [`GlobalStateForm::Flb`] (upstream): `liveupdate_register_flb`, `liveupdate_flb_get_incoming/outgoing` (+ `put_incoming` in the newest) | shared by every linked handler; preserved on the first dependent file, unpreserved on the last, retrieved lazily, finished on the last | not held after get returns; incoming data reference-counted | C API of the core |
//! | [`GlobalStateForm::Subsystem`] (v4 style; the choice for HugeTLB) | independent of files: frozen on the reboot path after the files (unfrozen on rollback), restored eagerly at boot, finished after the last incoming session finishes; serialized in its own KHO subtree | handler-scoped | C API and Rust |
//! | Rust, all three | typed: `get` returns a guard (`!Send`, `#[must_use]`) that puts on drop; incoming and outgoing are different types ([`Incoming`], [`Outgoing`]) | held by the guard | `luo-abi` + macros |
//!
//! Calling `get` from inside the state's own callbacks would deadlock (the callbacks run under
//! the same lock): it is rejected at compile time where a capability token can express it, and
//! at run time with `EDEADLK` otherwise.

use core::fmt;

/// Which side of the kexec a piece of global state belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Handed over by the previous kernel, retrieved in this one (`get_incoming`).
    Incoming,
    /// Built in this kernel, to be handed to the next one (`get_outgoing`).
    Outgoing,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        })
    }
}

/// The three forms of handler global state (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GlobalStateForm {
    /// State bound to one file handler's file lifecycle (the v4 seed's
    /// `global_state_create/restore/destroy`).
    FileBound,
    /// File-Lifecycle-Bound object shared by several handlers (upstream `liveupdate_flb`).
    Flb,
    /// State with its own lifecycle, independent of files (v4 `liveupdate_register_subsystem`).
    Subsystem,
}

mod sealed {
    pub trait Sealed {}
}

/// Type-level [`Direction`], so that incoming and outgoing guards are different types.
/// Sealed: implemented only by [`Incoming`] and [`Outgoing`].
pub trait DirectionMarker: sealed::Sealed + Copy + Send + Sync + 'static {
    /// The value-level direction.
    const DIRECTION: Direction;
}

/// Type-level [`Direction::Incoming`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Incoming;

/// Type-level [`Direction::Outgoing`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Outgoing;

impl sealed::Sealed for Incoming {}
impl sealed::Sealed for Outgoing {}

impl DirectionMarker for Incoming {
    const DIRECTION: Direction = Direction::Incoming;
}

impl DirectionMarker for Outgoing {
    const DIRECTION: Direction = Direction::Outgoing;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn markers() {
        assert_eq!(Incoming::DIRECTION, Direction::Incoming);
        assert_eq!(Outgoing::DIRECTION, Direction::Outgoing);
        assert_eq!(Direction::Incoming.to_string(), "incoming");
    }
}
