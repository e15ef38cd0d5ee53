//! Finding the workspace's binaries from a test: cargo builds a package's binaries only for that package's own
//! integration tests, so the tests of another package (and the benchmark examples) look beside their executable,
//! and a test builds a missing binary itself.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The agent binary a test crate knows at compile time (`CARGO_BIN_EXE_twinflash-edge`), set by [`set_agent_binary`].
static AGENT: OnceLock<PathBuf> = OnceLock::new();

/// Pins the agent binary: twinflash-edge's own tests pass `env!("CARGO_BIN_EXE_twinflash-edge")`, which
/// [`agent_binary`] then returns before anything else. The first call wins.
pub fn set_agent_binary(path: impl Into<PathBuf>) {
    let _ = AGENT.set(path.into());
}

/// The `twinflash-edge` binary.
///
/// The one pinned by [`set_agent_binary`] (twinflash-edge's tests), else `TWINFLASH_EDGE_BIN`, else
/// `<target>/<profile>/twinflash-edge` next to this executable (`cargo build -p twinflash-edge
/// --no-default-features` with the same `CARGO_TARGET_DIR` puts it there; an example, a benchmark, always takes
/// that one). If a test finds it missing, it builds it itself with `$CARGO` into a separate target directory
/// `<target>/<profile>/edge-agent-build` (the outer `cargo test` holds the lock of the main one); that first build
/// takes minutes.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = AGENT.get() {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("TWINFLASH_EDGE_BIN") {
        return p.into();
    }
    beside_or_built(
        "twinflash-edge",
        "edge-agent-build",
        &["-p", "twinflash-edge", "--no-default-features"],
    )
}

/// The `twinflash-cloud` binary: `TWINFLASH_CLOUD_BIN`, else `<target>/<profile>/twinflash-cloud` next to this
/// executable (`cargo test -p twinflash-cloud` or `cargo build --workspace` puts it there), else, as for
/// [`agent_binary`], built by the test into `<target>/<profile>/cloud-build`.
pub fn cloud_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TWINFLASH_CLOUD_BIN") {
        return p.into();
    }
    beside_or_built("twinflash-cloud", "cloud-build", &["-p", "twinflash-cloud"])
}

/// `name` in the profile directory of the running executable (`<target>/<profile>/deps/<test>` or
/// `<target>/<profile>/examples/<example>`); for a test, if it is not there, built with `build_args` into
/// `<target>/<profile>/<own_target>`.
fn beside_or_built(name: &str, own_target: &str, build_args: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let parent = exe.parent().unwrap();
    let profile_dir = parent.parent().unwrap().to_path_buf();
    let beside = profile_dir.join(name);
    // An example (a benchmark) must run the binary built beside it, never a debug build of its own.
    if beside.exists() || parent.file_name().is_none_or(|d| d != "deps") {
        return beside;
    }
    let own_target = profile_dir.join(own_target);
    let built = own_target.join("debug").join(name);
    if !built.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let status = Command::new(cargo)
            .arg("build")
            .args(build_args)
            .arg("--manifest-path")
            .arg(manifest)
            .env("CARGO_TARGET_DIR", &own_target)
            .status()
            .unwrap();
        assert!(status.success(), "building {name} failed");
    }
    built
}
