//! The Rust LUO core and KHO model (work in progress: issue 4).
