//! A minimal HTTP/1.1 client over `std::net::TcpStream`, enough to ask a registry for a status
//! code (readiness, auth checks) without an HTTP client crate or a runtime.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);
const MAX_HEAD: usize = 64 * 1024;

/// Status code and raw header block of one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpHead {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The header lines as received (without the status line), `\r\n`-separated.
    pub headers: String,
}

impl HttpHead {
    /// The first header named `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.split("\r\n").find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Sends `GET <path>` to `addr` (optionally with HTTP basic auth) and returns the response head.
/// The body is not read.
pub fn get(addr: SocketAddr, path: &str, basic_auth: Option<(&str, &str)>) -> io::Result<HttpHead> {
    get_within(addr, path, basic_auth, TIMEOUT)
}

/// [`get`] with `timeout` for connect, and for each read and write.
pub fn get_within(
    addr: SocketAddr,
    path: &str,
    basic_auth: Option<(&str, &str)>,
    timeout: Duration,
) -> io::Result<HttpHead> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((user, password)) = basic_auth {
        let token = base64(format!("{user}:{password}").as_bytes());
        request.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;

    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return Err(invalid("response head larger than 64 KiB"));
        }
    }
    parse_head(&head)
}

/// Runs `curl -sSf` with `args`, for what this client does not do (uploads, other methods, bodies): its output, or
/// curl's error.
pub fn curl(args: &[&str]) -> Result<Vec<u8>, String> {
    let out = std::process::Command::new("curl")
        .arg("-sSf")
        .args(args)
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn parse_head(raw: &[u8]) -> io::Result<HttpHead> {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/") {
        return Err(invalid("not an HTTP response"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid("no status code"))?;
    Ok(HttpHead {
        status,
        headers: headers.to_owned(),
    })
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// Standard base64 with padding (RFC 4648), for the basic auth header.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn parses_status_and_headers() {
        let head = parse_head(
            b"HTTP/1.1 401 Unauthorized\r\nWww-Authenticate: Basic realm=\"x\"\r\n\r\nbody",
        )
        .unwrap();
        assert_eq!(head.status, 401);
        assert_eq!(head.header("www-authenticate"), Some("Basic realm=\"x\""));
        assert_eq!(head.header("missing"), None);
        assert!(parse_head(b"garbage").is_err());
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }
}
