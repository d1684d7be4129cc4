#![allow(unused_imports)]
// SPDX-License-Identifier: GPL-2.0-only OR MIT
use luo_abi::file::{File, FileRef};
use luo_abi::handler::{Ctx, FileHandler, RetrieveStatus};
use luo_abi::{Errno, Result};
use luo_derive::liveupdate_handler;
use luo_generated::memfd::v2::memfd_luo_ser;

#[liveupdate_handler(compatible = "memfd-v2", abi = luo_generated::memfd::v2::memfd_luo_ser)]
struct Memfd<T>(T);

fn main() {}
