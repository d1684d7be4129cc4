//! luo-spec
pub mod ast;
pub mod expr;
pub mod diag;
pub mod model;
pub mod ty;
