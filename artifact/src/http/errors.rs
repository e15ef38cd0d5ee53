//! Transport errors of the registry client to fetch errors. A TLS alert from the registry about
//! our client certificate (none sent, unknown CA, expired, ...) is `registry-auth`: the registry
//! refused our credentials, and retrying cannot help. Every other transport error is transient;
//! a timeout names the limit that was hit (the total deadlines are enforced by the client itself).

use std::error::Error as StdError;

use rustls::AlertDescription;

use super::policy::UrlRefused;
use crate::error::FetchError;
use crate::registry::Timeouts;

/// Maps a reqwest error from `source_name`; `timeouts` name the limit of a timeout.
pub(crate) fn from_reqwest(
    source_name: &str,
    err: &reqwest::Error,
    timeouts: &Timeouts,
) -> FetchError {
    if let Some(refused) = causes(err).find_map(|e| e.downcast_ref::<UrlRefused>()) {
        return FetchError::RedirectRefused {
            source_name: source_name.to_owned(),
            detail: refused.to_string(),
        };
    }
    let detail = describe(err, timeouts);
    if let Some(alert) = client_cert_refusal(err) {
        return FetchError::Auth {
            source_name: source_name.to_owned(),
            detail: format!(
                "TLS handshake refused ({alert:?}): the registry wants a client certificate it \
                 trusts (registry cert_file/key_file): {detail}"
            ),
        };
    }
    FetchError::Unreachable {
        source_name: source_name.to_owned(),
        detail,
    }
}

/// The error and its causes on one line; a timeout says which limit it was.
pub(crate) fn describe(err: &reqwest::Error, timeouts: &Timeouts) -> String {
    let detail = chain(err);
    if !err.is_timeout() {
        detail
    } else if err.is_connect() {
        format!("connect timeout of {:?}: {detail}", timeouts.connect)
    } else {
        format!("no data for {:?} (idle timeout): {detail}", timeouts.idle)
    }
}

/// The error and its causes on one line.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = e.source();
    }
    out
}

/// The alert, if somewhere in the chain the registry refused our client certificate.
fn client_cert_refusal(err: &(dyn StdError + 'static)) -> Option<AlertDescription> {
    causes(err).find_map(|e| e.downcast_ref::<rustls::Error>().and_then(refusal_alert))
}

/// The error and every cause below it, looking inside `io::Error`s too (their `source()` skips the error they wrap).
fn causes<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    let mut next: Option<&'a (dyn StdError + 'static)> = Some(err);
    std::iter::from_fn(move || {
        let e = next?;
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
        Some(e)
    })
}

fn refusal_alert(err: &rustls::Error) -> Option<AlertDescription> {
    match err {
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied),
        ) => Some(*alert),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_alerts_are_found_inside_io_errors() {
        let io = std::io::Error::other(rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired,
        ));
        assert_eq!(
            client_cert_refusal(&io),
            Some(AlertDescription::CertificateRequired)
        );
        let other = std::io::Error::other(rustls::Error::AlertReceived(
            AlertDescription::HandshakeFailure,
        ));
        assert_eq!(client_cert_refusal(&other), None);
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(client_cert_refusal(&plain), None);
    }
}
