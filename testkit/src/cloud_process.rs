//! [`CloudProcess`]: a real `twinflash-cloud` as a child process of an end-to-end test, with its log in a file.
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::cloud_binary;

/// `twinflash-cloud` running with a configuration file, killed when dropped.
pub struct CloudProcess {
    child: Child,
    log: PathBuf,
}

impl CloudProcess {
    /// Writes `config` to `<dir>/cloud.toml` and starts the controller against the API server of `kubeconfig`. Its
    /// output is appended to `<dir>/cloud.log` (a restarted controller keeps the earlier lines).
    pub fn start(dir: &Path, config: &str, kubeconfig: &Path) -> CloudProcess {
        let path = dir.join("cloud.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("cloud.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(cloud_binary())
            .arg("--config")
            .arg(&path)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", "twinflash-cloud-e2e")
            .env("RUST_LOG", "info,twinflash_cloud=debug")
            .env("NO_COLOR", "1")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        CloudProcess { child, log }
    }

    /// Everything the controller logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for CloudProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
