//! How to reach registries (`TlsOptions`), and the oci-client `Client` that `push` uses: plain
//! HTTP only for listed hosts, an extra CA, timeouts. Pulls (fetch, inspect) use the crate's own
//! client, which also presents a client certificate; oci-client 0.18 cannot, so push refuses one.

use std::path::PathBuf;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};

use crate::error::FetchError;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Registries (`host[:port]`) reached over plain HTTP. Every other host uses HTTPS.
    pub plain_http: Vec<String>,
    /// A PEM file of extra CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate for mutual TLS, presented by fetch and inspect. `push` goes
    /// through oci-client 0.18, which has no client identity: [`build_client`] refuses it
    /// rather than silently ignore it.
    pub client_cert: Option<PathBuf>,
    /// The PEM key of [`TlsOptions::client_cert`].
    pub client_key: Option<PathBuf>,
    /// Connect timeout (default 10 s).
    pub connect_timeout: Option<Duration>,
    /// Read timeout: a stalled connection fails after this long (default 30 s).
    pub read_timeout: Option<Duration>,
}

/// Builds the oci-client `Client` of `push` for these options.
pub fn build_client(opts: &TlsOptions) -> Result<oci_client::Client, FetchError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if opts.client_cert.is_some() || opts.client_key.is_some() {
        return Err(FetchError::Config(
            "push does not support client certificates (oci-client 0.18 has no client \
             identity); push to a registry that does not require one"
                .to_owned(),
        ));
    }
    let mut extra_root_certificates = Vec::new();
    if let Some(path) = &opts.ca_file {
        let data = std::fs::read(path).map_err(|e| FetchError::io("read CA file", path, e))?;
        extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    let config = ClientConfig {
        protocol: ClientProtocol::HttpsExcept(opts.plain_http.clone()),
        extra_root_certificates,
        connect_timeout: Some(opts.connect_timeout.unwrap_or(Duration::from_secs(10))),
        read_timeout: Some(opts.read_timeout.unwrap_or(Duration::from_secs(30))),
        platform_resolver: None,
        user_agent: concat!("twinflash/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    };
    oci_client::Client::try_from(config).map_err(|e| FetchError::Config(e.to_string()))
}
