//! Building the oci-client `Client` shared by push and fetch: plain HTTP only for listed hosts,
//! an extra CA, timeouts. (oci-client 0.18 has no client-certificate option; see `TlsOptions`.)

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
    /// A PEM client certificate for mutual TLS. Not supported by oci-client 0.18: setting it
    /// makes [`build_client`] fail with a configuration error rather than silently ignore it.
    pub client_cert: Option<PathBuf>,
    /// The PEM key of [`TlsOptions::client_cert`].
    pub client_key: Option<PathBuf>,
    /// Connect timeout (default 10 s).
    pub connect_timeout: Option<Duration>,
    /// Read timeout: a stalled connection fails after this long (default 30 s).
    pub read_timeout: Option<Duration>,
}

/// Builds an oci-client `Client` for these options.
pub fn build_client(opts: &TlsOptions) -> Result<oci_client::Client, FetchError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if opts.client_cert.is_some() || opts.client_key.is_some() {
        return Err(FetchError::Config(
            "client certificates are not supported (oci-client 0.18 has no client identity)"
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
