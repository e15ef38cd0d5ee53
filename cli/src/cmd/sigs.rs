//! What `sign`, `push --sign-key`, `verify` and `inspect` share about signatures: reading a
//! signing key (cosign's encrypted `cosign.key` included), the registry client of a lookup, and
//! one report line or JSON object per signature found.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;
use twinflash_artifact::signature::{
    self, Body, Discovery, Found, SigningKey, TrustedKey, Verified, bundle::Bundle,
    cosign::Payload, cosign_key,
};
use twinflash_artifact::{FetchConfig, Mirror, Timeouts};

use crate::cmd::registry::{ClientCert, RegistryArgs, registry_of};

/// The environment variable cosign reads the password of `cosign.key` from (the same name, so a
/// cosign setup works unchanged).
pub const PASSWORD_ENV: &str = "COSIGN_PASSWORD";

/// Reads a private key: unencrypted PKCS#8 / SEC1 PEM, or cosign's encrypted `cosign.key`, whose
/// password comes from `COSIGN_PASSWORD`, else a prompt when stdin is a terminal; without either
/// it is an error rather than a hang on a pipe.
pub fn load_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let pem = mqtt_schema::small_file::read_small_file(path)
        .with_context(|| format!("read signing key {}", path.display()))?;
    let key = if cosign_key::is_cosign_pem(&pem) {
        let password = password(path)?;
        SigningKey::from_cosign_pem(&pem, password.as_bytes())
    } else {
        SigningKey::from_pem(&pem)
    };
    key.map_err(|e| anyhow::anyhow!("signing key {}: {e}", path.display()))
}

fn password(path: &Path) -> anyhow::Result<String> {
    if let Some(p) = std::env::var_os(PASSWORD_ENV) {
        return p
            .into_string()
            .map_err(|_| anyhow::anyhow!("{PASSWORD_ENV} is not UTF-8"));
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "{} is an encrypted cosign key: set {PASSWORD_ENV} (no terminal to ask on)",
            path.display()
        );
    }
    eprint!("Enter password for private key {}: ", path.display());
    let line = without_echo(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .context("read the password")?;
    eprintln!();
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Runs `read` with the terminal's echo off, restoring it afterwards.
fn without_echo<T>(read: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let Ok(saved) = tcgetattr(&stdin) else {
        return read();
    };
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
    let out = read();
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    out
}

/// `--mirror HOST` or `--mirror oci:DIR` (as `pull` takes them).
pub fn parse_mirror(s: &str) -> Mirror {
    match s.strip_prefix("oci:") {
        Some(dir) => Mirror::Layout(PathBuf::from(dir)),
        None => Mirror::Registry(s.to_owned()),
    }
}

/// The registry options of a fetch or a signature lookup of `reference`: plain HTTP for the
/// reference's registry and every registry mirror under `--plain-http`, CA, client certificate,
/// credentials, deadlines. The cache directory is the caller's (a lookup uses none).
pub fn fetch_config(
    cache_dir: PathBuf,
    registry: &RegistryArgs,
    client: &ClientCert,
    reference: &str,
    mirrors: Vec<Mirror>,
    timeouts: Timeouts,
) -> anyhow::Result<FetchConfig> {
    let mut plain_http = registry.tls(reference, client).plain_http;
    if registry.plain_http {
        for m in &mirrors {
            if let Mirror::Registry(host) = m {
                plain_http.push(host.clone());
            }
        }
        plain_http.push(registry_of(reference));
    }
    let mut cfg = FetchConfig::new(cache_dir);
    cfg.plain_http = plain_http;
    cfg.mirrors = mirrors;
    cfg.credentials = registry.credentials()?;
    cfg.ca_file = registry.ca_file.clone();
    cfg.client_cert = client.cert.clone();
    cfg.client_key = client.key.clone();
    cfg.timeouts = timeouts;
    cfg.allow_link_local_redirects = registry.allow_link_local_redirects;
    Ok(cfg)
}

/// Reads the trusted public keys (`--key`, repeatable); each is reported by its file name.
pub fn trusted_keys(files: &[PathBuf]) -> anyhow::Result<Vec<TrustedKey>> {
    files
        .iter()
        .map(|p| TrustedKey::from_file(p).map_err(|e| anyhow::anyhow!("{e}")))
        .collect()
}

/// One found signature, described without trusting it.
pub struct Seen<'a> {
    /// The signature.
    pub found: &'a Found,
    /// Whether it carries a certificate instead of naming a key (keyless signing).
    pub keyless: bool,
    /// The repository its payload names (simple signing); unverified unless `result` is `Ok`.
    pub claimed_reference: Option<String>,
    /// The check against the trusted keys, when keys were given.
    pub result: Option<Result<Verified, String>>,
}

impl<'a> Seen<'a> {
    /// Describes `found`, checked against `keys` unless there are none.
    pub fn new(digest: &str, discovery: &Discovery, found: &'a Found, keys: &[TrustedKey]) -> Self {
        let (keyless, claimed_reference) = match &found.body {
            Body::Simple {
                payload, keyless, ..
            } => (
                *keyless,
                Payload::parse(payload.as_bytes())
                    .ok()
                    .map(|p| p.critical.identity.docker_reference),
            ),
            Body::Bundle { json } => (
                Bundle::parse(json.as_bytes()).is_ok_and(|b| b.is_keyless()),
                None,
            ),
        };
        let result =
            (!keys.is_empty()).then(|| signature::check(digest, &discovery.manifest, found, keys));
        Self {
            found,
            keyless,
            claimed_reference,
            result,
        }
    }

    /// The result word: `verified`, `invalid`, or `unchecked` (no keys given).
    pub fn outcome(&self) -> &'static str {
        match &self.result {
            Some(Ok(_)) => "verified",
            Some(Err(_)) => "invalid",
            None => "unchecked",
        }
    }

    /// One line: location, format, keyless or key, the claimed reference, the result.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{} ({}, {}",
            self.found.location,
            self.found.format().as_str(),
            if self.keyless { "keyless" } else { "key" }
        );
        if let Some(r) = &self.claimed_reference {
            s.push_str(&format!(", claims {r}"));
        }
        s.push(')');
        match &self.result {
            Some(Ok(v)) => s.push_str(&format!(": verified, signer {} ({})", v.signer, v.key_id)),
            Some(Err(e)) => s.push_str(&format!(": invalid: {e}")),
            None => {}
        }
        s
    }

    /// The JSON object of `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = json!({
            "location": self.found.location,
            "format": self.found.format(),
            "keyless": self.keyless,
            "claimed_reference": self.claimed_reference,
            "result": self.outcome(),
        });
        match &self.result {
            Some(Ok(verified)) => {
                v["signer"] = json!(verified.signer);
                v["key_id"] = json!(verified.key_id);
            }
            Some(Err(e)) => v["reason"] = json!(e),
            None => {}
        }
        v
    }
}
