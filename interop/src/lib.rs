//! Interop tests only (`tests/`): sigstore-rs against twinflash's signatures. No library code.
