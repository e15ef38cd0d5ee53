//! Registry credentials: anonymous, basic (explicit username + password file, or a docker
//! `config.json`), and bearer tokens. The registry token exchange (401 + Bearer challenge) is done
//! by the pull client (`crate::http`) and, for push, by oci-client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// Where credentials come from. Explicit credentials apply to every registry (origin and
/// mirrors); the docker config is looked up by registry host.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Username for basic auth.
    pub username: Option<String>,
    /// File holding the password (first line, trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// A bearer token used as is.
    pub bearer_token: Option<String>,
    /// A docker `config.json` (`auths.<host>.auth`, `username`/`password`, or `registrytoken`).
    pub docker_config: Option<PathBuf>,
}

/// Credentials that cannot be read. Code `registry-auth`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The password file or docker config cannot be read.
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The docker config is malformed.
    #[error("malformed docker config {path}: {reason}")]
    DockerConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A username without a password file, or the reverse.
    #[error("a username needs a password file and a password file needs a username")]
    Incomplete,
}

impl AuthError {
    /// The stable code of this error.
    pub fn code(&self) -> mqtt_schema::ErrorCode {
        mqtt_schema::ErrorCode::RegistryAuth
    }
}

#[derive(Debug, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Debug, Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
}

/// Credentials resolved once (files read), then looked up per registry.
#[derive(Debug, Clone, Default)]
pub struct ResolvedCredentials {
    explicit: Option<RegistryAuth>,
    by_host: BTreeMap<String, RegistryAuth>,
}

impl Credentials {
    /// Reads the files now, so a bad path fails at start-up and not at the first download.
    pub fn resolve(&self) -> Result<ResolvedCredentials, AuthError> {
        let explicit = match (&self.username, &self.password_file, &self.bearer_token) {
            (_, _, Some(token)) => Some(RegistryAuth::Bearer(token.clone())),
            (Some(user), Some(file), None) => {
                let password = read_to_string(file)?;
                let password = password.lines().next().unwrap_or_default().to_owned();
                Some(RegistryAuth::Basic(user.clone(), password))
            }
            (None, None, None) => None,
            _ => return Err(AuthError::Incomplete),
        };
        let by_host = match &self.docker_config {
            Some(path) => parse_docker_config(path, &read_to_string(path)?)?,
            None => BTreeMap::new(),
        };
        Ok(ResolvedCredentials { explicit, by_host })
    }
}

impl ResolvedCredentials {
    /// The credentials to present to `registry` (`host[:port]`).
    pub fn for_registry(&self, registry: &str) -> RegistryAuth {
        if let Some(auth) = &self.explicit {
            return auth.clone();
        }
        self.by_host
            .get(registry)
            .cloned()
            .unwrap_or(RegistryAuth::Anonymous)
    }
}

fn read_to_string(path: &Path) -> Result<String, AuthError> {
    mqtt_schema::small_file::read_small_text(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })
}

fn normalize_host(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    if host == "index.docker.io" {
        "docker.io".to_owned()
    } else {
        host.to_owned()
    }
}

/// Parses a docker `config.json` into per-host credentials.
pub(crate) fn parse_docker_config(
    path: &Path,
    text: &str,
) -> Result<BTreeMap<String, RegistryAuth>, AuthError> {
    let bad = |reason: String| AuthError::DockerConfig {
        path: path.to_owned(),
        reason,
    };
    let config: DockerConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (key, entry) in config.auths {
        // `identitytoken` is an OAuth2 refresh token (the OAuth2 POST flow, not supported): ignored.
        let auth = if let Some(token) = entry.registrytoken {
            RegistryAuth::Bearer(token)
        } else if let (Some(u), Some(p)) = (entry.username, entry.password) {
            RegistryAuth::Basic(u, p)
        } else if let Some(b64) = entry.auth {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| bad(format!("auths.{key}.auth: {e}")))?;
            let raw = String::from_utf8(raw).map_err(|e| bad(format!("auths.{key}.auth: {e}")))?;
            let Some((u, p)) = raw.split_once(':') else {
                return Err(bad(format!("auths.{key}.auth is not user:password")));
            };
            RegistryAuth::Basic(u.to_owned(), p.to_owned())
        } else {
            continue;
        };
        out.insert(normalize_host(&key), auth);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_forms_are_read_by_host() {
        let text = r#"{"auths":{
            "https://reg.example:5000/v1/": {"auth": "dXNlcjpwYXNz"},
            "other.example": {"username": "a", "password": "b"},
            "tok.example": {"registrytoken": "T"},
            "refresh.example": {"identitytoken": "R"},
            "empty.example": {}
        }}"#;
        let map = parse_docker_config(Path::new("c.json"), text).unwrap();
        assert!(
            matches!(map.get("reg.example:5000"), Some(RegistryAuth::Basic(u, p)) if u == "user" && p == "pass")
        );
        assert!(
            matches!(map.get("other.example"), Some(RegistryAuth::Basic(u, p)) if u == "a" && p == "b")
        );
        assert!(matches!(map.get("tok.example"), Some(RegistryAuth::Bearer(t)) if t == "T"));
        assert!(!map.contains_key("empty.example"));
        assert!(!map.contains_key("refresh.example"));
    }

    #[test]
    fn malformed_docker_config_is_an_error() {
        assert!(parse_docker_config(Path::new("c"), "{").is_err());
        assert!(parse_docker_config(Path::new("c"), r#"{"auths":{"h":{"auth":"!!"}}}"#).is_err());
        assert!(
            parse_docker_config(Path::new("c"), r#"{"auths":{"h":{"auth":"bm9jb2xvbg=="}}}"#)
                .is_err()
        );
    }

    #[test]
    fn explicit_credentials_win_and_need_both_parts() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let creds = Credentials {
            username: Some("u".into()),
            password_file: Some(pw),
            ..Default::default()
        };
        let resolved = creds.resolve().unwrap();
        assert!(
            matches!(resolved.for_registry("x"), RegistryAuth::Basic(u, p) if u == "u" && p == "s3cret")
        );
        let half = Credentials {
            username: Some("u".into()),
            ..Default::default()
        };
        assert!(matches!(half.resolve(), Err(AuthError::Incomplete)));
        assert!(matches!(
            Credentials::default().resolve().unwrap().for_registry("x"),
            RegistryAuth::Anonymous
        ));
    }
}
