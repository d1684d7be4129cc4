//! Tests of the `luo` macros and the runtime they expand against.
//!
//! * `tests/ui/fail/*.rs` and `tests/ui/pass/*.rs`: trybuild cases (`tests/ui.rs`); every
//!   compile-fail case has a committed `.stderr` naming the problem and the fix. Re-bless with
//!   `TRYBUILD=overwrite cargo test -p luo-ui-tests --test ui`.
//! * `tests/runtime.rs`: handlers, FLBs, handler-scoped state and subsystems driven through
//!   the generated C ops tables by [`core::MiniCore`], across a simulated kexec.
//! * `tests/c_table.rs`: `c/check_table.c`, compiled by gcc against the generated
//!   `<linux/liveupdate.h>` (see `build.rs`), reads the tables the Rust side built.
//!
//! This library holds what those tests share: a Vec-backed KHO ([`kho::VecKho`]), a
//! miniature core ([`core::MiniCore`]), synthetic files ([`file::TestFile`]) and the C
//! checker's entry points ([`c`]).

pub mod core;
pub mod file;
pub mod kho;

/// The functions of `c/check_table.c`.
pub mod c {
    use luo_generated::liveupdate::{
        file, liveupdate_fh_global_state_ops, liveupdate_file_handler, liveupdate_flb,
        liveupdate_subsystem,
    };

    unsafe extern "C" {
        /// Bit i set when the i-th callback of the handler's `liveupdate_file_ops` is non-NULL.
        pub fn luo_c_file_ops_mask(h: *const liveupdate_file_handler) -> u32;
        /// 0 when the handler's compatible is exactly `expect`, NUL-padded.
        pub fn luo_c_check_compatible(
            h: *const liveupdate_file_handler,
            expect: *const core::ffi::c_char,
        ) -> i32;
        /// Calls `can_preserve` through the table.
        pub fn luo_c_call_can_preserve(h: *mut liveupdate_file_handler, f: *mut file) -> i32;
        /// Calls `preserve` then `unpreserve` through the table.
        pub fn luo_c_preserve_unpreserve(
            h: *mut liveupdate_file_handler,
            f: *mut file,
            handle: *mut u64,
        ) -> i32;
        /// Bit i set when the i-th op of the FLB's table is non-NULL.
        pub fn luo_c_flb_ops_mask(flb: *const liveupdate_flb) -> u32;
        /// Bit i set when the i-th op of the subsystem's table is non-NULL.
        pub fn luo_c_subsystem_ops_mask(s: *const liveupdate_subsystem) -> u32;
        /// 0 when the subsystem's name is `expect`.
        pub fn luo_c_subsystem_name(
            s: *const liveupdate_subsystem,
            expect: *const core::ffi::c_char,
        ) -> i32;
        /// Bit i set when the i-th op of the state's table is non-NULL.
        pub fn luo_c_state_ops_mask(o: *const liveupdate_fh_global_state_ops) -> u32;
    }
}
