//! The harness's error type: which service, which port, and the log tail when a start failed.
//! Every variant maps to a stable [`ErrorCode`] so tests can assert on it like on product errors.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use mqtt_schema::ErrorCode;

/// Something the harness could not do.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The service binary is neither on `PATH` nor at its usual Debian location.
    #[error("{binary} not found on PATH nor at {fallback} (install it; scripts/test.sh does)")]
    BinaryNotFound {
        /// The binary looked for.
        binary: &'static str,
        /// The absolute path tried after `PATH`.
        fallback: &'static str,
    },
    /// The process could not be spawned at all.
    #[error("cannot spawn {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The process exited while we waited for it to become ready.
    #[error("{binary} exited during start on 127.0.0.1:{port} ({status}); log tail:\n{log_tail}")]
    Exited {
        /// The binary.
        binary: &'static str,
        /// The port it was told to listen on.
        port: u16,
        /// Its exit status.
        status: String,
        /// The last lines of its log and stderr.
        log_tail: String,
    },
    /// The process kept running but did not answer in time.
    #[error("{binary} not ready on 127.0.0.1:{port} after {waited:?}; log tail:\n{log_tail}")]
    NotReady {
        /// The binary.
        binary: &'static str,
        /// The port it was told to listen on.
        port: u16,
        /// How long we waited.
        waited: Duration,
        /// The last lines of its log and stderr.
        log_tail: String,
    },
    /// A local file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path or address involved.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `htpasswd -Bbn` failed.
    #[error("htpasswd failed for user {user:?}: {detail}")]
    Htpasswd {
        /// The user name.
        user: String,
        /// Exit status and stderr.
        detail: String,
    },
    /// The fake Kubernetes API server refused a write of the test API.
    #[error("fake API server refused: {code} {reason}: {message}")]
    KubeApi {
        /// HTTP status code.
        code: u16,
        /// The `Status` reason (`NotFound`, `Conflict`, ...).
        reason: String,
        /// Details.
        message: String,
    },
    /// A file the caller gave (TLS material) does not exist.
    /// An emulated board's UART did not print a line with `pattern` in time (or QEMU exited).
    #[error("{board}: no UART line containing {pattern:?} after {waited:?}; last lines:\n{tail}")]
    Uart {
        /// The QEMU machine.
        board: &'static str,
        /// What was awaited.
        pattern: String,
        /// How long.
        waited: Duration,
        /// The last UART lines and QEMU's own output.
        tail: String,
    },
    #[error("missing file {path}")]
    MissingFile {
        /// The path.
        path: PathBuf,
    },
}

impl HarnessError {
    /// The stable code: a broker that does not come up is `broker-unreachable`, a registry
    /// `registry-unreachable`, a slow start `timeout`, local trouble `internal`.
    pub fn code(&self) -> ErrorCode {
        match self {
            HarnessError::Exited { binary, .. } => match *binary {
                crate::mosquitto::BINARY => ErrorCode::BrokerUnreachable,
                crate::registry::BINARY => ErrorCode::RegistryUnreachable,
                _ => ErrorCode::Internal,
            },
            HarnessError::NotReady { .. } | HarnessError::Uart { .. } => ErrorCode::Timeout,
            HarnessError::BinaryNotFound { .. }
            | HarnessError::Spawn { .. }
            | HarnessError::Io { .. }
            | HarnessError::Htpasswd { .. }
            | HarnessError::KubeApi { .. }
            | HarnessError::MissingFile { .. } => ErrorCode::Internal,
        }
    }

    /// Whether the service exited because its port was taken (a race after [`crate::free_port`]);
    /// the `start` functions retry on another port then.
    pub fn is_port_taken(&self) -> bool {
        match self {
            HarnessError::Exited { log_tail, .. } => log_tail
                .to_ascii_lowercase()
                .contains("address already in use"),
            _ => false,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        HarnessError::Io {
            what: what.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(binary: &'static str, log_tail: &str) -> HarnessError {
        HarnessError::Exited {
            binary,
            port: 1883,
            status: "exit status: 1".into(),
            log_tail: log_tail.into(),
        }
    }

    #[test]
    fn codes_follow_the_service() {
        assert_eq!(exited("mosquitto", "").code(), ErrorCode::BrokerUnreachable);
        assert_eq!(
            exited("docker-registry", "").code(),
            ErrorCode::RegistryUnreachable
        );
        let slow = HarnessError::NotReady {
            binary: "mosquitto",
            port: 1,
            waited: Duration::from_secs(10),
            log_tail: String::new(),
        };
        assert_eq!(slow.code(), ErrorCode::Timeout);
        let missing = HarnessError::BinaryNotFound {
            binary: "mosquitto",
            fallback: "/usr/sbin/mosquitto",
        };
        assert_eq!(missing.code(), ErrorCode::Internal);
    }

    #[test]
    fn port_taken_is_read_from_the_log_tail() {
        assert!(exited("mosquitto", "1: Error: Address already in use").is_port_taken());
        assert!(
            exited(
                "docker-registry",
                "listen tcp: bind: address already in use"
            )
            .is_port_taken()
        );
        assert!(!exited("mosquitto", "Error: Unable to load CA certificates").is_port_taken());
        let msg = exited("mosquitto", "the tail").to_string();
        assert!(msg.contains("mosquitto") && msg.contains("1883") && msg.contains("the tail"));
    }
}
