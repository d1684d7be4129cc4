//! Procedural macros of luo (work in progress: issue 3).
