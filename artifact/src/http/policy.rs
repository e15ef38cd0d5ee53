//! Where a registry may send the client: every URL a registry names (a redirect's `Location`, the token realm of a
//! 401) is checked against the same rules as the registry itself, before a connection is made:
//! - plain HTTP only to hosts listed in `plain_http` (everything else is TLS), so a TLS-only registry cannot send
//!   credentials or firmware requests over plain HTTP by naming another URL;
//! - no link-local address (169.254.0.0/16, fe80::/10, the cloud metadata addresses) unless
//!   `allow_link_local_redirects`: a registry must not turn the agent into a probe of the node's metadata service.
//!
//! A refusal is `FetchError::RedirectRefused` (code `redirect-refused`), never blamed on the credentials.
//! The check reads the host as the URL writes it: a host name that resolves to a link-local address is not caught
//! here (that is the node's egress policy).

use std::net::{IpAddr, Ipv6Addr};

use reqwest::Url;

/// Redirects followed per request, as reqwest's default policy.
const MAX_REDIRECTS: usize = 10;
/// AWS's IPv6 instance metadata address (IPv4 ones are link-local already).
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);
/// Cloud metadata services reached by name.
const METADATA_NAMES: &[&str] = &["metadata.google.internal"];

/// A URL the policy refuses; the message names the URL (clipped) and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UrlRefused(pub String);

/// The rules, from the client's options.
#[derive(Debug, Clone, Default)]
pub(crate) struct UrlPolicy {
    pub plain_http: Vec<String>,
    pub allow_link_local: bool,
}

impl UrlPolicy {
    /// Whether the client may go to `url`.
    pub fn check(&self, url: &Url) -> Result<(), UrlRefused> {
        let refuse = |why: &str| {
            Err(UrlRefused(format!(
                "{} refused: {why}",
                mqtt_schema::clip::clip(url.as_str())
            )))
        };
        let Some(host) = url.host_str() else {
            return refuse("no host");
        };
        match url.scheme() {
            "https" => {}
            "http" => {
                let authority = match url.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host.to_owned(),
                };
                if !self.plain_http.contains(&authority) {
                    return refuse(&format!(
                        "plain HTTP to {authority}, which is not in plain_http (every other host is TLS only)"
                    ));
                }
            }
            other => {
                return refuse(&format!(
                    "scheme {other:?} (only https, and http to plain_http hosts)"
                ));
            }
        }
        if !self.allow_link_local && is_link_local(host) {
            return refuse(
                "a link-local address (cloud metadata services live there; allow_link_local_redirects = true \
                 allows it)",
            );
        }
        Ok(())
    }

    /// The redirect policy of the client: each hop is checked before it is followed.
    pub fn redirects(&self) -> reqwest::redirect::Policy {
        let policy = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if let Err(refused) = policy.check(attempt.url()) {
                let error = UrlRefused(format!("redirect to {refused}"));
                attempt.error(error)
            } else if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else {
                attempt.follow()
            }
        })
    }
}

/// A link-local or cloud metadata host: 169.254.0.0/16, fe80::/10 (also IPv4-mapped), fd00:ec2::254, or a metadata
/// service's name.
fn is_link_local(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_link_local(),
        Ok(IpAddr::V6(v6)) => {
            v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == AWS_METADATA_V6
        }
        Err(_) => {
            let name = bare.trim_end_matches('.').to_ascii_lowercase();
            METADATA_NAMES.contains(&name.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: &UrlPolicy, url: &str) -> Result<(), UrlRefused> {
        policy.check(&Url::parse(url).unwrap())
    }

    #[test]
    fn plain_http_only_to_listed_hosts() {
        let policy = UrlPolicy {
            plain_http: vec!["127.0.0.1:5000".into(), "lab.local".into()],
            allow_link_local: false,
        };
        assert!(check(&policy, "http://127.0.0.1:5000/v2/").is_ok());
        assert!(check(&policy, "http://lab.local/token").is_ok());
        assert!(check(&policy, "https://auth.example/token").is_ok());
        for bad in [
            "http://127.0.0.1:5001/v2/",
            "http://auth.example/token",
            "http://lab.local:8080/token",
            "ftp://127.0.0.1:5000/x",
            "file:///etc/passwd",
        ] {
            assert!(check(&policy, bad).is_err(), "{bad}");
        }
        let err = check(&policy, "http://auth.example/token").unwrap_err();
        assert!(err.0.contains("not in plain_http"), "{err}");
    }

    #[test]
    fn link_local_and_metadata_hosts_unless_allowed() {
        let strict = UrlPolicy::default();
        for bad in [
            "https://169.254.169.254/latest/meta-data/",
            "https://169.254.0.1/",
            "https://[fe80::1]/",
            "https://[febf::1]/",
            "https://[::ffff:169.254.169.254]/",
            "https://[fd00:ec2::254]/",
            "https://metadata.google.internal/computeMetadata/v1/",
            "https://METADATA.google.internal./",
        ] {
            let err = check(&strict, bad).unwrap_err();
            assert!(err.0.contains("link-local"), "{bad}: {err}");
        }
        for ok in [
            "https://169.255.0.1/",
            "https://[fec0::1]/",
            "https://10.0.0.1/",
            "https://registry.example/",
        ] {
            assert!(check(&strict, ok).is_ok(), "{ok}");
        }
        let allowed = UrlPolicy {
            allow_link_local: true,
            ..UrlPolicy::default()
        };
        assert!(check(&allowed, "https://169.254.169.254/").is_ok());
        // Allowing link-local addresses does not allow plain HTTP.
        assert!(check(&allowed, "http://169.254.169.254/").is_err());
    }
}
