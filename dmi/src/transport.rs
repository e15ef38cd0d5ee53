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

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::Status;

pub mod authority;

type StdError = Box<dyn std::error::Error + Send + Sync>;

/// Binds a unix socket at `path`: the parent directory is created, a stale socket file left by an earlier run is
/// removed first (as edgecore does with its own dmi.sock). DMI has no authentication, so the socket is made `0600`:
/// only its owner (and root, as edgecore runs) can connect.
pub fn bind(path: &Path) -> io::Result<UnixListenerStream> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(UnixListenerStream::new(listener))
}

/// Serves `service` (a generated `...Server`) on every connection of `incoming` until `shutdown`. Connections
/// that are open then finish their calls on their own. Every `:authority` grpc-go sends is taken (see
/// [`authority`]).
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
    loop {
        let next = tokio::select! {
            s = incoming.next() => s,
            () = &mut shutdown => return,
        };
        match next {
            Some(Ok(stream)) => {
                let svc = hyper_util::service::TowerToHyperService::new(service.clone());
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(authority::FixAuthority::new(stream)), svc)
                        .await;
                });
            }
            Some(Err(_)) => {
                // A failed accept (out of file descriptors): wait a moment instead of spinning. The peer's call
                // fails, and it says so (edgecore logs it).
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => return,
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
