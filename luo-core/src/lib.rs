//! The Rust LUO core and the KHO model.
//!
//! * [`mem`]: physical memory: a metadata arena (heap or memfd+mmap backing) and external
//!   regions (host memfds with synthetic pfns).
//! * [`kho`]: Kexec HandOver over that memory, implementing [`luo_abi::kho::KhoService`].
//! * [`blocks`]: KHO block chains.

pub mod blocks;
pub mod error;
pub mod kho;
pub mod mem;
pub mod util;

pub use error::ImageError;
