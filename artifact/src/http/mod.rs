//! The fetcher's own registry client on reqwest (rustls): manifest GET, blob GET with `Range`,
//! extra CA, optional client certificate (mutual TLS), plain HTTP only for listed hosts, and
//! anonymous, basic and bearer-token auth. Why it is hand-written: docs/decisions/0003-registry-http.md.
//! Every read has an idle timeout (reqwest's `read_timeout`) and a total deadline per request
//! (manifest, token, blob; [`Timeouts`]), so a registry that trickles bytes cannot hold a fetch.

mod bearer;
mod errors;
mod policy;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use mqtt_schema::small_file::read_small_file;
use oci_client::secrets::RegistryAuth;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_RANGE, RANGE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};

use crate::auth::ResolvedCredentials;
use crate::error::FetchError;
use crate::registry::{Timeouts, TlsOptions};
use bearer::{Challenge, TokenCache};
pub(crate) use errors::{describe, from_reqwest};
pub(crate) use policy::UrlPolicy;

/// Largest manifest accepted (a firmware manifest is about 1 KiB).
pub(crate) const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// The OCI image index media type (referrers answers and the referrers tag schema).
pub(crate) const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Largest token-service answer accepted.
const MAX_TOKEN_ANSWER: usize = 1024 * 1024;

/// A blob body from some offset.
pub(crate) struct BlobBody {
    /// The source ignored the offset and sends from byte 0.
    pub from_start: bool,
    /// Bytes the source says it will send, if it says.
    pub content_length: Option<u64>,
    /// When the request's total deadline passes (the receiver stops there and resumes).
    pub deadline: Option<Instant>,
    pub stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// Where a request goes: registry (`host[:port]`) and repository.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Repo<'a> {
    pub registry: &'a str,
    pub repository: &'a str,
}

/// A registry client for pulls, shared by every source of a fetcher.
#[derive(Debug)]
pub(crate) struct RegistryClient {
    http: reqwest::Client,
    plain_http: Vec<String>,
    /// Where registries may send the client (redirects, token realms).
    policy: UrlPolicy,
    creds: Arc<ResolvedCredentials>,
    tokens: TokenCache,
    timeouts: Timeouts,
}

impl RegistryClient {
    /// Builds the client: reads CA, client certificate and key now, so a bad file fails at start.
    pub fn new(opts: &TlsOptions, creds: Arc<ResolvedCredentials>) -> Result<Self, FetchError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = UrlPolicy {
            plain_http: opts.plain_http.clone(),
            allow_link_local: opts.allow_link_local_redirects,
        };
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("twinflash/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(opts.timeouts.connect)
            .read_timeout(opts.timeouts.idle)
            .redirect(policy.redirects())
            .no_proxy();
        if let Some(path) = &opts.ca_file {
            let pem = read_small_file(path).map_err(|e| FetchError::io("read CA file", path, e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| FetchError::Config(format!("CA file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(FetchError::Config(format!(
                    "CA file {} holds no certificate",
                    path.display()
                )));
            }
            builder = builder.tls_certs_merge(certs);
        }
        match (&opts.client_cert, &opts.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = read_small_file(cert)
                    .map_err(|e| FetchError::io("read client cert", cert, e))?;
                pem.push(b'\n');
                pem.extend(
                    read_small_file(key).map_err(|e| FetchError::io("read client key", key, e))?,
                );
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    FetchError::Config(format!(
                        "client certificate {} / key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(FetchError::Config(
                    "a client certificate needs its key and a key needs its certificate".to_owned(),
                ));
            }
        }
        let http = builder
            .build()
            .map_err(|e| FetchError::Config(format!("registry HTTP client: {e}")))?;
        Ok(Self {
            http,
            plain_http: opts.plain_http.clone(),
            policy,
            creds,
            tokens: TokenCache::default(),
            timeouts: opts.timeouts,
        })
    }

    /// `fut`, failed as a transient `Unreachable` if it is not done within `limit`.
    async fn within<T>(
        &self,
        repo: Repo<'_>,
        what: &str,
        limit: Duration,
        fut: impl Future<Output = Result<T, FetchError>>,
    ) -> Result<T, FetchError> {
        tokio::time::timeout(limit, fut)
            .await
            .unwrap_or_else(|_| Err(deadline_passed(repo, what, limit)))
    }

    fn base(&self, registry: &str) -> String {
        let scheme = if self.plain_http.iter().any(|h| h == registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{registry}/v2")
    }

    /// `GET /v2/<repo>/manifests/<reference>` (a tag or a digest): the raw bytes, unverified.
    pub async fn manifest(
        &self,
        repo: Repo<'_>,
        reference: &str,
        accept: &str,
    ) -> Result<Vec<u8>, FetchError> {
        let url = format!(
            "{}/{}/manifests/{reference}",
            self.base(repo.registry),
            repo.repository
        );
        let fetch = async {
            let response = self
                .send(repo, |r| r.get(&url).header(ACCEPT, accept))
                .await?;
            read_limited(repo, response, MAX_MANIFEST, "manifest", &self.timeouts).await
        };
        self.within(repo, "manifest", self.timeouts.manifest, fetch)
            .await
    }

    /// `GET /v2/<repo>/referrers/<digest>` (OCI distribution-spec 1.1): the image index of the
    /// manifests whose `subject` is `digest`. `None` when the registry has no referrers API (it
    /// answers 404 to the route: the caller falls back to the referrers tag schema).
    pub async fn referrers(
        &self,
        repo: Repo<'_>,
        digest: &str,
    ) -> Result<Option<Vec<u8>>, FetchError> {
        let url = format!(
            "{}/{}/referrers/{digest}",
            self.base(repo.registry),
            repo.repository
        );
        let fetch = async {
            let response = self
                .send(repo, |r| r.get(&url).header(ACCEPT, INDEX_MEDIA_TYPE))
                .await;
            match response {
                Ok(response) => {
                    read_limited(repo, response, MAX_MANIFEST, "referrers", &self.timeouts)
                        .await
                        .map(Some)
                }
                Err(FetchError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        self.within(repo, "referrers", self.timeouts.manifest, fetch)
            .await
    }

    /// A small blob in full (a signature payload or bundle), refused beyond `max` bytes. Unverified.
    pub async fn small_blob(
        &self,
        repo: Repo<'_>,
        digest: &str,
        max: usize,
    ) -> Result<Vec<u8>, FetchError> {
        let url = format!(
            "{}/{}/blobs/{digest}",
            self.base(repo.registry),
            repo.repository
        );
        let fetch = async {
            let response = self.send(repo, |r| r.get(&url)).await?;
            read_limited(repo, response, max, "signature blob", &self.timeouts).await
        };
        self.within(repo, "signature blob", self.timeouts.manifest, fetch)
            .await
    }

    /// `GET /v2/<repo>/blobs/<digest>` from `offset` (a `Range` request when `offset > 0`).
    pub async fn blob(
        &self,
        repo: Repo<'_>,
        digest: &str,
        offset: u64,
    ) -> Result<BlobBody, FetchError> {
        let url = format!(
            "{}/{}/blobs/{digest}",
            self.base(repo.registry),
            repo.repository
        );
        let limit = self.timeouts.blob_request;
        let deadline = Instant::now().checked_add(limit);
        let send = self.send(repo, |r| {
            let r = r.get(&url);
            if offset > 0 {
                r.header(RANGE, format!("bytes={offset}-"))
            } else {
                r
            }
        });
        let response = self.within(repo, "blob request", limit, send).await?;
        let from_start = response.status() != StatusCode::PARTIAL_CONTENT;
        if !from_start {
            let start = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start);
            if start != Some(offset) {
                return Err(rejected(
                    repo,
                    format!("206 answer does not start at byte {offset} (Content-Range {start:?})"),
                ));
            }
        }
        let content_length = response.content_length();
        let timeouts = self.timeouts;
        let stream = response
            .bytes_stream()
            .map(move |r| r.map_err(|e| std::io::Error::other(describe(&e, &timeouts))))
            .boxed();
        Ok(BlobBody {
            from_start,
            content_length,
            deadline,
            stream,
        })
    }

    /// Sends a request with the registry's credentials; on a Bearer challenge gets a token (once),
    /// caches it for the repository and sends again. Any non-2xx answer becomes its error.
    async fn send(
        &self,
        repo: Repo<'_>,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Response, FetchError> {
        let auth = self.creds.for_registry(repo.registry);
        let mut header = match self.tokens.get(repo.registry, repo.repository) {
            Some(token) => Some(format!("Bearer {token}")),
            None => auth_header(&auth),
        };
        let mut exchanged = false;
        loop {
            let mut request = build(&self.http);
            if let Some(h) = &header {
                request = request.header(AUTHORIZATION, h);
            }
            let response = request
                .send()
                .await
                .map_err(|e| from_reqwest(repo.registry, &e, &self.timeouts))?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status == StatusCode::UNAUTHORIZED
                && !exchanged
                && let Some(challenge) = bearer_challenge(&response)
            {
                exchanged = true;
                let token = self.token(repo, &challenge, &auth).await?;
                header = Some(format!("Bearer {token}"));
                continue;
            }
            return Err(status_error(repo, response).await);
        }
    }

    /// The registry token flow: `GET <realm>?service=..&scope=..` with basic credentials if any,
    /// within the token deadline.
    async fn token(
        &self,
        repo: Repo<'_>,
        challenge: &Challenge,
        auth: &RegistryAuth,
    ) -> Result<String, FetchError> {
        let exchange = self.exchange(repo, challenge, auth);
        let what = format!("token service {}", challenge.realm);
        self.within(repo, &what, self.timeouts.token, exchange)
            .await
    }

    async fn exchange(
        &self,
        repo: Repo<'_>,
        challenge: &Challenge,
        auth: &RegistryAuth,
    ) -> Result<String, FetchError> {
        let scope = challenge
            .scope
            .clone()
            .unwrap_or_else(|| format!("repository:{}:pull", repo.repository));
        let mut query = vec![("scope", scope)];
        if let Some(service) = &challenge.service {
            query.push(("service", service.clone()));
        }
        let realm = self.realm(repo.registry, challenge)?;
        let mut request = self.http.get(realm).query(&query);
        if let RegistryAuth::Basic(user, password) = auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| from_reqwest(repo.registry, &e, &self.timeouts))?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let detail = format!(
                "token service {}: {}",
                challenge.realm,
                excerpt(response).await
            );
            return Err(FetchError::from_status(
                repo.registry.to_owned(),
                status,
                detail,
            ));
        }
        let body = read_limited(
            repo,
            response,
            MAX_TOKEN_ANSWER,
            "token answer",
            &self.timeouts,
        )
        .await?;
        let (token, ttl) =
            bearer::parse_token_response(&body).map_err(|detail| FetchError::Auth {
                source_name: repo.registry.to_owned(),
                detail: format!("token service {}: {detail}", challenge.realm),
            })?;
        self.tokens
            .put(repo.registry, repo.repository, token.clone(), ttl);
        Ok(token)
    }
}

impl RegistryClient {
    /// The token realm of `challenge`, if the client may go there with credentials: the same rules as a redirect
    /// (`plain_http`, link-local addresses), checked before anything is sent.
    fn realm(&self, registry: &str, challenge: &Challenge) -> Result<reqwest::Url, FetchError> {
        let refused = |detail: String| FetchError::RedirectRefused {
            source_name: registry.to_owned(),
            detail,
        };
        let url = reqwest::Url::parse(&challenge.realm).map_err(|e| {
            refused(format!(
                "token realm {:?} is not a URL: {e}",
                mqtt_schema::clip::clip(&challenge.realm)
            ))
        })?;
        self.policy
            .check(&url)
            .map_err(|r| refused(format!("token realm {r}")))?;
        Ok(url)
    }

    /// Reads the registry's challenge (`GET /v2/` without credentials) and checks its token realm as [`Self::realm`]
    /// does. For `push` and `sign`, whose oci-client follows the realm itself with no hook: a realm that the pull
    /// client would refuse stops them before oci-client sends a credential.
    pub async fn check_token_realm(&self, registry: &str) -> Result<(), FetchError> {
        let url = format!("{}/", self.base(registry));
        let check = async {
            let response = self
                .http
                .get(&url)
                .send()
                .await
                .map_err(|e| from_reqwest(registry, &e, &self.timeouts))?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(());
            }
            match bearer_challenge(&response) {
                Some(challenge) => self.realm(registry, &challenge).map(|_| ()),
                None => Ok(()),
            }
        };
        let repo = Repo {
            registry,
            repository: "",
        };
        self.within(repo, "registry check", self.timeouts.manifest, check)
            .await
    }
}

/// The Bearer challenge of a 401, if it has one.
fn bearer_challenge(response: &Response) -> Option<Challenge> {
    response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(Challenge::parse_bearer)
}

/// The whole body, refused (`Rejected`) beyond `max` bytes.
async fn read_limited(
    repo: Repo<'_>,
    mut response: Response,
    max: usize,
    what: &str,
    timeouts: &Timeouts,
) -> Result<Vec<u8>, FetchError> {
    if let Some(len) = response.content_length()
        && len > max as u64
    {
        return Err(rejected(
            repo,
            format!("{what} of {len} bytes (at most {max})"),
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| from_reqwest(repo.registry, &e, timeouts))?
    {
        if body.len() + chunk.len() > max {
            return Err(rejected(repo, format!("{what} larger than {max} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn auth_header(auth: &RegistryAuth) -> Option<String> {
    use base64::Engine;
    match auth {
        RegistryAuth::Anonymous => None,
        RegistryAuth::Basic(user, password) => Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )),
        RegistryAuth::Bearer(token) => Some(format!("Bearer {token}")),
    }
}

/// A total deadline passed: transient, like any other registry that does not answer in time.
fn deadline_passed(repo: Repo<'_>, what: &str, limit: Duration) -> FetchError {
    FetchError::Unreachable {
        source_name: repo.registry.to_owned(),
        detail: format!("{what} not complete within its deadline of {limit:?}"),
    }
}

fn rejected(repo: Repo<'_>, detail: String) -> FetchError {
    FetchError::Rejected {
        source_name: repo.registry.to_owned(),
        detail,
    }
}

/// `bytes <start>-<end>/<size>` -> start.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// The start of an error body, for the message (registries answer with a JSON envelope).
/// Reads at most a few KiB of it: an error body is not trusted to be small.
async fn excerpt(mut response: Response) -> String {
    const MAX: usize = 300;
    let status = response.status();
    let mut body = Vec::new();
    while body.len() < MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    format!("{status} {}", text.trim())
}

async fn status_error(repo: Repo<'_>, response: Response) -> FetchError {
    let status = response.status().as_u16();
    let url = response.url().path().to_owned();
    let detail = format!("GET {url}: {}", excerpt(response).await);
    FetchError::from_status(repo.registry.to_owned(), status, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_starts_are_read() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 0-0/1"), Some(0));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
    }

    #[test]
    fn credentials_become_headers() {
        assert_eq!(auth_header(&RegistryAuth::Anonymous), None);
        assert_eq!(
            auth_header(&RegistryAuth::Basic("u".into(), "p".into())).as_deref(),
            Some("Basic dTpw")
        );
        assert_eq!(
            auth_header(&RegistryAuth::Bearer("t".into())).as_deref(),
            Some("Bearer t")
        );
    }
}
