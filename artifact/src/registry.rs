//! How to reach registries (`TlsOptions`, with its `Timeouts`), and the oci-client `Client` that
//! `push` uses: plain HTTP only for listed hosts, an extra CA, timeouts. Pulls (fetch, inspect) use the crate's own
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
    /// Idle timeouts and total deadlines of registry requests.
    pub timeouts: Timeouts,
    /// Follow redirects and token realms to link-local addresses (169.254.0.0/16, fe80::/10, cloud metadata
    /// addresses). Off by default: such a redirect is refused as `redirect-refused` before any connection.
    /// `plain_http` applies to redirects and realms either way.
    pub allow_link_local_redirects: bool,
}

/// Deadlines of registry requests: every network read has an idle timeout and a total deadline
/// (docs/security.md, "Limits and deadlines"). Each one that is hit is a transient
/// `registry-unreachable` error: the agent reports `waiting:registry-unreachable` and retries
/// with backoff, the CLI retries `--retries` times, then exits non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting to a registry or token service (default 10 s).
    pub connect: Duration,
    /// Idle timeout of every read: no byte for this long fails the request (default 30 s).
    /// A trickle of one byte now and then never trips it; the total deadlines below do.
    pub idle: Duration,
    /// Total deadline of one manifest request, headers and body (default 60 s; a firmware
    /// manifest is about 1 KiB).
    pub manifest: Duration,
    /// Total deadline of one token-service request (default 30 s).
    pub token: Duration,
    /// Total deadline of one blob request (default 1 h; push does not use it). The fetcher then
    /// resumes with `Range` from its durable offset, at once and without counting an attempt
    /// when the request made progress: a slow but progressing download still completes. The
    /// long default keeps the cost of reconnecting negligible and lets a source that ignores
    /// `Range` (and restarts from byte 0) finish any layer it can send within an hour.
    pub blob_request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(30),
            manifest: Duration::from_secs(60),
            token: Duration::from_secs(30),
            blob_request: Duration::from_secs(3600),
        }
    }
}

/// The oci-client `Client` of `push` and `sign` for `registry`, with its credentials stored, once the registry's
/// token realm passed the rules of the pull client (`plain_http`, no link-local address): oci-client follows the realm
/// of a 401 itself and has no hook for it, so our client reads the challenge first and a realm it would refuse stops
/// the push before oci-client sends a credential (`redirect-refused`). oci-client's own redirects (blob uploads) are
/// followed by its reqwest defaults, which drop `Authorization` on a change of host.
pub(crate) async fn push_client(
    opts: &TlsOptions,
    credentials: &crate::auth::ResolvedCredentials,
    registry: &str,
) -> Result<oci_client::Client, FetchError> {
    let client = build_client(opts)?;
    crate::http::RegistryClient::new(opts, std::sync::Arc::new(credentials.clone()))?
        .check_token_realm(registry)
        .await?;
    client
        .store_auth_if_needed(registry, &credentials.for_registry(registry))
        .await;
    Ok(client)
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
        let data = mqtt_schema::small_file::read_small_file(path)
            .map_err(|e| FetchError::io("read CA file", path, e))?;
        extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    let config = ClientConfig {
        protocol: ClientProtocol::HttpsExcept(opts.plain_http.clone()),
        extra_root_certificates,
        connect_timeout: Some(opts.timeouts.connect),
        read_timeout: Some(opts.timeouts.idle),
        platform_resolver: None,
        user_agent: concat!("twinflash/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    };
    oci_client::Client::try_from(config).map_err(|e| FetchError::Config(e.to_string()))
}
