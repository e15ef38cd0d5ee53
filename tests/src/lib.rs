//! Workspace end-to-end tests live in `tests/e2e/`; this crate exists so cargo runs them.
