//! A scripted loopback HTTP/1.1 server for hostile-registry cases a real registry cannot play: a 401 whose token
//! realm is elsewhere, redirects, answers that hang, trickle or never end. Each request is answered by a route
//! `(host, target, authorization) -> Answer`, one thread per connection so that a slow answer blocks no other.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One answer of the scripted server: status, extra header lines, body, and how it is sent: at once, trickled at
/// 1 byte/s (the head at once), never (`hang`: the server holds the connection and sends nothing), or, for
/// `flood > 0`, `flood` bytes of filler in chunked encoding instead of `body` (as fast as the client reads).
pub struct Answer {
    pub status: u16,
    pub extra: String,
    pub body: Vec<u8>,
    pub trickle: bool,
    pub hang: bool,
    pub flood: u64,
}

/// `status` with `body`, sent at once or trickled.
pub fn answer(status: u16, body: Vec<u8>, trickle: bool) -> Answer {
    Answer {
        status,
        extra: String::new(),
        body,
        trickle,
        hang: false,
        flood: 0,
    }
}

/// An answer that never comes.
pub fn hang() -> Answer {
    Answer {
        hang: true,
        ..answer(200, Vec::new(), false)
    }
}

/// A redirect to `location`.
pub fn redirect(location: &str) -> Answer {
    Answer {
        extra: format!("Location: {location}\r\n"),
        ..answer(307, Vec::new(), false)
    }
}

/// A 200 whose chunked body is `bytes` long, whatever was asked.
pub fn flood(bytes: u64) -> Answer {
    Answer {
        flood: bytes,
        ..answer(200, Vec::new(), false)
    }
}

/// Reads one HTTP request head: the target and the headers (names in lower case); `None` if the client sent
/// nothing.
pub fn read_head(reader: &mut impl BufRead) -> Option<(String, HashMap<String, String>)> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    Some((target, headers))
}

/// The route of a scripted server: `(host, target, authorization) -> Answer`.
type Route = dyn Fn(&str, &str, &str) -> Answer + Send + Sync;

/// A loopback HTTP server answering each request with its route. It counts the connections it accepted; it stops
/// accepting when the test process ends.
pub struct Scripted {
    /// `127.0.0.1:<port>`.
    pub host: String,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    /// Listens on a free loopback port and answers with `route`.
    pub fn start(
        route: impl Fn(&str, &str, &str) -> Answer + Send + Sync + 'static,
    ) -> io::Result<Scripted> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let host = listener.local_addr()?.to_string();
        let route: Arc<Route> = Arc::new(route);
        let connections = Arc::new(AtomicUsize::new(0));
        let (h, count) = (host.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let (route, h) = (route.clone(), h.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &h, &*route);
                });
            }
        });
        Ok(Scripted { host, connections })
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn serve(mut stream: TcpStream, host: &str, route: &Route) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let Some((target, headers)) = read_head(&mut reader) else {
        return Ok(());
    };
    let auth = headers.get("authorization").map_or("", String::as_str);
    let a = route(host, &target, auth);
    if a.hang {
        // Held open, silent, until the client gives up (or the test ends).
        let _ = io::copy(&mut reader, &mut io::sink());
        return Ok(());
    }
    if a.flood > 0 {
        let head = format!(
            "HTTP/1.1 {} X\r\nContent-Type: application/octet-stream\r\n{}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            a.status, a.extra
        );
        stream.write_all(head.as_bytes())?;
        let chunk = vec![b'f'; 64 * 1024];
        let mut left = a.flood;
        while left > 0 {
            let n = left.min(chunk.len() as u64);
            let len = usize::try_from(n).unwrap_or(chunk.len());
            stream.write_all(format!("{n:x}\r\n").as_bytes())?;
            stream.write_all(&chunk[..len])?;
            stream.write_all(b"\r\n")?;
            left -= n;
        }
        return stream.write_all(b"0\r\n\r\n");
    }
    let head = format!(
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\n{}Content-Length: {}\r\nConnection: close\r\n\r\n",
        a.status,
        a.extra,
        a.body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !a.trickle {
        return stream.write_all(&a.body);
    }
    for byte in a.body {
        // An error: the client gave up.
        stream.write_all(&[byte])?;
        stream.flush()?;
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

/// What a scripted server was asked.
pub type Seen = Arc<Mutex<Vec<String>>>;

/// A registry of one firmware manifest (`digest`: `manifest`) that lists `count` Sigstore-bundle referrers, each of
/// which hangs when asked (as does a blob, unless `blob` is given); cosign's `.sig` tag is unknown (404). The
/// requests that hang are recorded.
pub fn hanging_referrers(
    manifest: Vec<u8>,
    digest: &str,
    blob: Option<Vec<u8>>,
    count: usize,
) -> io::Result<(Scripted, Seen)> {
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let entries: Vec<serde_json::Value> = (0..count)
        .map(|i| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{i:064x}"), "size": 100,
                "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json"})
        })
        .collect();
    let referrers = serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
    )
    .map_err(io::Error::other)?;
    let asked: Seen = Arc::default();
    let log = asked.clone();
    let manifest_path = format!("/manifests/{digest}");
    let server = Scripted::start(move |_, target, _| {
        if target.contains("/referrers/") {
            answer(200, referrers.clone(), false)
        } else if target.ends_with(&manifest_path) {
            answer(200, manifest.clone(), false)
        } else if target.contains("/manifests/sha256-") {
            answer(
                404,
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#.to_vec(),
                false,
            )
        } else if let Some(blob) = blob.as_ref().filter(|_| target.contains("/blobs/")) {
            answer(200, blob.clone(), false)
        } else {
            if let Ok(mut log) = log.lock() {
                log.push(target.to_owned());
            }
            hang()
        }
    })?;
    Ok((server, asked))
}
