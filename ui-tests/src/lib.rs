//! trybuild cases live in `tests/ui/` (issue 3).
