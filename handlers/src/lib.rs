//! LUO file handlers and global state (issues 5 and 6).
