//! The registry bearer-token flow: parse a `WWW-Authenticate: Bearer realm=..,service=..,scope=..`
//! challenge, read the token service's answer, and cache tokens per repository until they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Lifetime of a token whose answer has no `expires_in` (the distribution spec's default).
const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// A token is not reused in its last seconds, so it does not expire in flight.
const MARGIN: Duration = Duration::from_secs(5);

/// A Bearer challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

impl Challenge {
    /// Parses one `WWW-Authenticate` value; `None` unless it is a Bearer challenge with a realm.
    pub fn parse_bearer(value: &str) -> Option<Self> {
        let value = value.trim();
        let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut realm = None;
        let mut service = None;
        let mut scope = None;
        for (key, val) in auth_params(params) {
            match key.to_ascii_lowercase().as_str() {
                "realm" => realm = Some(val),
                "service" => service = Some(val),
                "scope" => scope = Some(val),
                _ => {}
            }
        }
        Some(Self {
            realm: realm.filter(|r| !r.is_empty())?,
            service,
            scope,
        })
    }
}

/// `k="v", k2=v2` pairs; quoted values may hold commas and `\"`.
fn auth_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next()),
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                val.push(*c);
                chars.next();
            }
        }
        out.push((key.trim().to_owned(), val.trim().to_owned()));
    }
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// The token and its lifetime from a token service's JSON answer.
pub(crate) fn parse_token_response(body: &[u8]) -> Result<(String, Duration), String> {
    let answer: TokenResponse =
        serde_json::from_slice(body).map_err(|e| format!("malformed token answer: {e}"))?;
    let token = answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "the token answer holds no token".to_owned())?;
    let ttl = answer
        .expires_in
        .map_or(DEFAULT_TTL, |s| Duration::from_secs(s.min(86_400)));
    Ok((token, ttl))
}

/// Tokens by `(registry, repository)`, each until it expires.
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl TokenCache {
    /// A token for the repository that is still valid.
    pub fn get(&self, registry: &str, repository: &str) -> Option<String> {
        let mut tokens = self.tokens.lock().ok()?;
        let key = (registry.to_owned(), repository.to_owned());
        match tokens.get(&key) {
            Some((token, until)) if Instant::now() < *until => Some(token.clone()),
            Some(_) => {
                tokens.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Stores a token valid for `ttl` (minus a safety margin; not stored if shorter than it).
    pub fn put(&self, registry: &str, repository: &str, token: String, ttl: Duration) {
        let Some(ttl) = ttl.checked_sub(MARGIN).filter(|t| !t.is_zero()) else {
            return;
        };
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(
                (registry.to_owned(), repository.to_owned()),
                (token, Instant::now() + ttl),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_parsed() {
        let c = Challenge::parse_bearer(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:fw/a,b:pull""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        assert_eq!(c.scope.as_deref(), Some("repository:fw/a,b:pull"));
        let c = Challenge::parse_bearer("bearer realm=http://h/t, service=s").unwrap();
        assert_eq!((c.realm.as_str(), c.scope), ("http://h/t", None));
        assert_eq!(Challenge::parse_bearer(r#"Basic realm="x""#), None);
        assert_eq!(Challenge::parse_bearer("Bearer service=s"), None);
        assert_eq!(Challenge::parse_bearer(r#"Bearer realm="""#), None);
        assert_eq!(Challenge::parse_bearer(""), None);
        assert_eq!(
            Challenge::parse_bearer(r#"Bearer realm="unterminated"#)
                .unwrap()
                .realm,
            "unterminated"
        );
    }

    #[test]
    fn token_answers_are_read() {
        let (t, ttl) = parse_token_response(br#"{"token":"T","expires_in":300}"#).unwrap();
        assert_eq!((t.as_str(), ttl), ("T", Duration::from_secs(300)));
        let (t, ttl) = parse_token_response(br#"{"access_token":"A"}"#).unwrap();
        assert_eq!((t.as_str(), ttl), ("A", DEFAULT_TTL));
        assert!(parse_token_response(br#"{"token":""}"#).is_err());
        assert!(parse_token_response(b"<html>").is_err());
    }

    #[test]
    fn tokens_are_kept_per_repository_until_they_expire() {
        let cache = TokenCache::default();
        cache.put("r", "fw/a", "T".into(), Duration::from_secs(60));
        assert_eq!(cache.get("r", "fw/a").as_deref(), Some("T"));
        assert_eq!(cache.get("r", "fw/b"), None);
        assert_eq!(cache.get("other", "fw/a"), None);
        cache.put("r", "fw/b", "short".into(), Duration::from_secs(3));
        assert_eq!(cache.get("r", "fw/b"), None, "shorter than the margin");
        if let Ok(mut t) = cache.tokens.lock() {
            for (_, until) in t.values_mut() {
                *until = Instant::now();
            }
        }
        assert_eq!(cache.get("r", "fw/a"), None, "expired");
    }
}
