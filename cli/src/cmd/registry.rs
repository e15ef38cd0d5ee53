//! Options every registry-facing verb shares: plain HTTP, CA, client certificate, credentials;
//! the deadlines of registry requests (pull, inspect); and progress bars.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

use twinflash_artifact::{Credentials, Timeouts, TlsOptions};

/// How to reach and authenticate to registries.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Use plain HTTP for the reference's registry (and `--insecure-host`s); HTTPS otherwise.
    #[arg(long)]
    pub plain_http: bool,
    /// Another registry HOST:PORT reached over plain HTTP (repeatable).
    #[arg(long = "insecure-host", value_name = "HOST")]
    pub insecure_hosts: Vec<String>,
    /// Extra CA certificates (PEM) to trust.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Username for basic auth (with --password-file).
    #[arg(long, env = "TWINFLASH_REGISTRY_USERNAME")]
    pub username: Option<String>,
    /// File holding the password (first line).
    #[arg(long, value_name = "FILE", env = "TWINFLASH_REGISTRY_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// Docker config.json with per-registry credentials [default: $DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json when present].
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
    /// Follow redirects and token realms to link-local addresses (169.254.0.0/16, fe80::/10, cloud
    /// metadata addresses); refused otherwise [redirect-refused]. Plain HTTP stays limited to
    /// --plain-http / --insecure-host hosts either way.
    #[arg(long)]
    pub allow_link_local_redirects: bool,
}

/// A client certificate for registries that require mutual TLS: `--cert` + `--key` (pull, inspect,
/// set; push cannot present one and refuses it).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientCertArgs {
    /// Client certificate (PEM) for registries that require mutual TLS (with --key). Used by
    /// pull, inspect and set; push cannot present one and refuses it.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Key (PEM) of the --cert client certificate (also spelled --cert-key, as sign and verify
    /// spell it).
    #[arg(long, alias = "cert-key", value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// The client certificate of `sign` and `verify`, whose `--key` is the signature key (as in
/// cosign): `--cert` + `--cert-key`.
#[derive(Debug, Clone, clap::Args)]
pub struct SignerCertArgs {
    /// Client certificate (PEM) for registries that require mutual TLS (with --cert-key).
    #[arg(long, value_name = "FILE", requires = "cert_key")]
    pub cert: Option<PathBuf>,
    /// Key (PEM) of the --cert client certificate.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub cert_key: Option<PathBuf>,
}

/// The registry options of `sign` and `verify`: [`RegistryArgs`] and a client certificate
/// spelled `--cert` + `--cert-key`.
#[derive(Debug, Clone, clap::Args)]
pub struct SignerRegistryArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub client_cert: SignerCertArgs,
}

impl SignerRegistryArgs {
    /// The client certificate.
    pub fn client(&self) -> ClientCert {
        (&self.client_cert).into()
    }

    /// TLS and plain-HTTP options for a reference.
    pub fn tls(&self, reference: &str) -> TlsOptions {
        self.registry.tls(reference, &self.client())
    }
}

/// A client certificate and its key, from either spelling.
#[derive(Debug, Clone, Default)]
pub struct ClientCert {
    /// The certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Its key (PEM).
    pub key: Option<PathBuf>,
}

impl From<&ClientCertArgs> for ClientCert {
    fn from(a: &ClientCertArgs) -> Self {
        Self {
            cert: a.cert.clone(),
            key: a.key.clone(),
        }
    }
}

impl From<&SignerCertArgs> for ClientCert {
    fn from(a: &SignerCertArgs) -> Self {
        Self {
            cert: a.cert.clone(),
            key: a.cert_key.clone(),
        }
    }
}

/// Idle timeout and total deadlines of registry requests, in seconds (docs/security.md). A limit
/// that is hit is `registry-unreachable`: retried `--retries` times, then a non-zero exit.
#[derive(Debug, Clone, clap::Args)]
pub struct DeadlineArgs {
    /// Connecting to a registry or token service.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout: u64,
    /// No byte received for this long fails a request.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,
    /// Total deadline of one manifest request.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub manifest_timeout: u64,
    /// Total deadline of one token-service request.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_timeout: u64,
}

impl DeadlineArgs {
    /// The timeouts; the blob deadline stays at its default.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(self.connect_timeout),
            idle: Duration::from_secs(self.idle_timeout),
            manifest: Duration::from_secs(self.manifest_timeout),
            token: Duration::from_secs(self.token_timeout),
            ..Timeouts::default()
        }
    }
}

impl RegistryArgs {
    /// TLS and plain-HTTP options for a reference, with a client certificate if given.
    pub fn tls(&self, reference: &str, client: &ClientCert) -> TlsOptions {
        let mut plain_http = self.insecure_hosts.clone();
        if self.plain_http {
            plain_http.push(registry_of(reference));
        }
        TlsOptions {
            plain_http,
            ca_file: self.ca_file.clone(),
            client_cert: client.cert.clone(),
            client_key: client.key.clone(),
            allow_link_local_redirects: self.allow_link_local_redirects,
            ..TlsOptions::default()
        }
    }

    /// Credentials from the flags, else from the default docker config when it exists.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        if self.username.is_some() != self.password_file.is_some() {
            anyhow::bail!("--username and --password-file go together [registry-auth]");
        }
        let docker_config = self.docker_config.clone().or_else(default_docker_config);
        Ok(Credentials {
            username: self.username.clone(),
            password_file: self.password_file.clone(),
            bearer_token: None,
            docker_config,
        })
    }
}

fn default_docker_config() -> Option<PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
    let path = dir.join("config.json");
    path.is_file().then_some(path)
}

/// The registry part (`host[:port]`) of a reference, as oci-client resolves it.
pub fn registry_of(reference: &str) -> String {
    reference
        .parse::<twinflash_artifact::Reference>()
        .map(|r| r.resolve_registry().to_owned())
        .unwrap_or_default()
}

/// A byte progress bar on stderr; indicatif hides it when stderr is not a terminal.
pub fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Adds the stable code to an error for the one-line message.
pub fn with_code<E: std::fmt::Display>(e: E, code: mqtt_schema::ErrorCode) -> anyhow::Error {
    anyhow::anyhow!("{e} [{code}]")
}

/// Reads `k=v` pairs.
pub fn parse_annotation(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("annotation {s:?} is not key=value"))?;
    if k.is_empty() {
        anyhow::bail!("annotation {s:?} has an empty key");
    }
    Ok((k.to_owned(), v.to_owned()))
}
