//! Throw-away certificates for TLS tests, made with the `openssl` CLI: a CA, a server certificate for 127.0.0.1
//! and a client certificate, all signed by the CA.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::HarnessError;

/// PEM files made by [`make_certs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certs {
    /// The CA certificate.
    pub ca: PathBuf,
    /// Server certificate for IP 127.0.0.1.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate (CN `twinflash-test-client`).
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
}

impl Certs {
    /// The files a mosquitto TLS listener needs.
    pub fn server_files(&self) -> crate::TlsFiles {
        crate::TlsFiles {
            ca_file: self.ca.clone(),
            cert_file: self.server_cert.clone(),
            key_file: self.server_key.clone(),
        }
    }
}

/// Makes a CA, a server and a client certificate in `dir` (valid two days).
pub fn make_certs(dir: &Path) -> Result<Certs, HarnessError> {
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n")
        .map_err(|e| HarnessError::io("write server.ext", e))?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")
        .map_err(|e| HarnessError::io("write client.ext", e))?;
    let steps = [
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=harness-ca",
        "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1",
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext",
        "req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=twinflash-test-client",
        "x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext",
    ];
    for step in steps {
        let out = Command::new("openssl")
            .args(step.split_whitespace())
            .current_dir(dir)
            .output()
            .map_err(|e| HarnessError::io(format!("openssl {step}"), e))?;
        if !out.status.success() {
            return Err(HarnessError::io(
                format!("openssl {step}"),
                std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
            ));
        }
    }
    Ok(Certs {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    })
}
