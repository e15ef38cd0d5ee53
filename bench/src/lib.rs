//! twinflash-bench: no library, only the benchmark drivers in `examples/` (`bench_agent`,
//! `bench_controller`, `bench_controller_api`, `bench_rollout`, `bench_rollout_api`), which
//! `scripts/bench.sh` builds in release mode and runs; see docs/benchmarks.md. Kept out of the
//! product crates so that their test doubles stay behind the `test-support` feature.
