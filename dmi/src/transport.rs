//! gRPC over unix sockets, written on hyper's HTTP/2 connections instead of tonic's transport. tonic's transport
//! brings tower's balancing, buffering and routing, which a mapper with one peer does not use; dropping it keeps
//! about half a megabyte out of the edge binary (docs/benchmarks.md). What is left is small:
//!
//! - [`bind`] and [`serve`]: one HTTP/2 server connection per accepted unix-socket connection, each served by the
//!   generated service (edgecore dials anew for every call, golden e13/e15). Each connection's client-to-server
//!   bytes go through [`authority::FixAuthority`] first: grpc-go sends the dialled socket path, percent-encoded, as
//!   `:authority` (golden h01), which h2 refuses (ADR 0004).
//! - [`UnixConnector`]: the client side for a generated client (`...Client::with_origin(connector, origin())`):
//!   one new connection per call, as mapper-framework does, so a restarted edgecore's new socket is simply dialled.
//!   Any failure to reach the peer is `Unavailable` (the code grpc-go gives, and the one that means "register
//!   again").

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::Status;

pub mod authority;

type StdError = Box<dyn std::error::Error + Send + Sync>;

/// Most connections served at once ([`serve`]): edgecore makes one call at a time, each on a new connection.
pub const MAX_CONNECTIONS: usize = 32;
/// How long one connection may live, handshake included: edgecore's deadline for a call is 10 s, so a connection
/// open for longer is of no use to it (an idle or unfinished one is closed).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(15);
/// Streams (calls) at once on one connection: edgecore makes one call per connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1;
/// HTTP/2 flow-control windows and header bound of a served connection: what a peer may send before the server
/// reads it.
pub const STREAM_WINDOW: u32 = 64 * 1024;
pub const CONNECTION_WINDOW: u32 = 64 * 1024;
pub const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Largest message of one call a served connection decodes, whatever the caller's own limit is (the agent's
/// `limits.max_message_bytes` is sized for MQTT, up to 16 MiB). A call's unfinished message is buffered as it
/// arrives, so with [`MAX_CONNECTIONS`] this bounds what peers can make the server hold: 32 × 512 KiB = 16 MiB (with
/// 16 MiB messages, 40 unfinished calls took the agent to 540 MiB). A Device or DeviceModel edgecore sends is a few
/// KiB.
pub const MAX_MESSAGE: usize = 512 * 1024;

/// Binds a unix socket at `path`, never deleting what it did not create:
/// - a missing parent directory is created `0700`;
/// - an existing socket is replaced only when it is stale (a connect is refused: left by an earlier run); a live
///   one is refused with [`io::ErrorKind::AddrInUse`] ("another process serves ..."), anything else at the path
///   with [`io::ErrorKind::AlreadyExists`];
/// - the socket is bound inside a private `0700` directory next to `path`, made `0600`, then renamed into place,
///   so it is never reachable with other modes (DMI has no authentication: only its owner, and root as edgecore
///   runs, can connect).
pub fn bind(path: &Path) -> io::Result<UnixListenerStream> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another process serves {}", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {} // stale: replaced below
            Err(e) => return Err(e),
        },
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; it is left alone",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let private = dir.join(format!(".tmp-{}-{nanos}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("s");
    let placed: io::Result<UnixListener> = (|| {
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    Ok(UnixListenerStream::new(placed?))
}

/// Serves `service` (a generated `...Server`) on every connection of `incoming` until `shutdown`. Connections
/// that are open then finish their calls on their own. Every `:authority` grpc-go sends is taken (see
/// [`authority`]). At most [`MAX_CONNECTIONS`] are served at once (more wait in the listen backlog), each for at
/// most [`CONNECTION_LIFETIME`], with the HTTP/2 bounds above.
pub async fn serve<S, B>(
    mut incoming: UnixListenerStream,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: tower_service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<StdError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<StdError>,
{
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let next = tokio::select! {
            s = async {
                let slot = slots.clone().acquire_owned().await.ok();
                (incoming.next().await, slot)
            } => s,
            () = &mut shutdown => return,
        };
        match next {
            (Some(Ok(stream)), slot) => {
                let svc = hyper_util::service::TowerToHyperService::new(service.clone());
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                        .initial_stream_window_size(STREAM_WINDOW)
                        .initial_connection_window_size(CONNECTION_WINDOW)
                        .max_header_list_size(MAX_HEADER_LIST)
                        .serve_connection(TokioIo::new(authority::FixAuthority::new(stream)), svc);
                    let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
                    drop(slot);
                });
            }
            (Some(Err(_)), _) => {
                // A failed accept (out of file descriptors): wait a moment instead of spinning. The peer's call
                // fails, and it says so (edgecore logs it).
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (None, _) => return,
        }
    }
}

/// The origin a generated client is built with (`with_origin`): HTTP/2 wants a scheme and an authority; the
/// connector ignores them.
pub fn origin() -> http::Uri {
    http::Uri::from_static("http://localhost")
}

/// A client transport that dials the unix socket `path` for every call (see the module doc).
#[derive(Debug, Clone)]
pub struct UnixConnector {
    path: Arc<PathBuf>,
    connect_timeout: Duration,
}

impl UnixConnector {
    /// Dials `path`, waiting at most `connect_timeout` for the connection and the HTTP/2 handshake.
    pub fn new(path: PathBuf, connect_timeout: Duration) -> UnixConnector {
        UnixConnector {
            path: Arc::new(path),
            connect_timeout,
        }
    }
}

impl<B> tower_service::Service<http::Request<B>> for UnixConnector
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<StdError>,
{
    type Response = http::Response<hyper::body::Incoming>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = self.path.clone();
        let wait = self.connect_timeout;
        Box::pin(async move {
            let unavailable = |what: &str, e: &dyn std::fmt::Display| {
                Status::unavailable(format!("{what} {}: {e}", path.display()))
            };
            let connect = async {
                let stream = UnixStream::connect(&*path)
                    .await
                    .map_err(|e| unavailable("cannot connect to", &e))?;
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(|e| unavailable("no HTTP/2 handshake with", &e))
            };
            let (mut send, conn) = tokio::time::timeout(wait, connect)
                .await
                .map_err(|_| unavailable("no connection within the deadline to", &"timeout"))??;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            send.send_request(req)
                .await
                .map_err(|e| unavailable("the connection broke to", &e))
        })
    }
}
