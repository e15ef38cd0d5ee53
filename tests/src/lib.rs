//! Workspace end-to-end tests live in `tests/e2e/`: they run the real `twinflash`, `twinflash-edge` and
//! `twinflash-cloud` binaries together against real mosquitto and registry. This crate exists so cargo runs them.
