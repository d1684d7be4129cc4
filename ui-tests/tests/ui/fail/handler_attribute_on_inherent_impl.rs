#![allow(unused_imports)]
// SPDX-License-Identifier: GPL-2.0-only OR MIT
use luo_abi::file::{File, FileRef};
use luo_abi::handler::{Ctx, FileHandler, RetrieveStatus};
use luo_abi::{Errno, Result};
use luo_derive::liveupdate_handler;

struct Memfd;

#[liveupdate_handler]
impl Memfd {
    fn can_preserve(&self) -> bool {
        false
    }
}

fn main() {}
