// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The spec-side tools, on top of the generator (`luo-spec`) and nothing generated:
//!
//! * [`diff`]: the schema diff between two kernels' layout snapshots (facts, then the policy
//!   that decides which break a live update), the compatibility matrix and its reports;
//! * [`commands`]: the `luo` commands that need only the spec (`gen`, `layout`, `schema ...`),
//!   shared by the `luo` CLI and the standalone `luo-gen`, which builds whatever state
//!   `generated/` is in;
//! * [`output`]: how every `luo` command prints (text, or JSON for tools).

pub mod commands;
pub mod diff;
pub mod output;
