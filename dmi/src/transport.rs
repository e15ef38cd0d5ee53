//! gRPC over unix sockets, both ways: a listener for a served socket, and a channel that dials a socket path for
//! each new connection (edgecore's socket may be replaced when it restarts; the channel then dials the new one).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint};

/// Binds a unix socket at `path`: the parent directory is created, a stale socket file left by an earlier run is
/// removed first (as edgecore does with its own dmi.sock).
pub fn bind(path: &Path) -> io::Result<UnixListenerStream> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(UnixListenerStream::new(UnixListener::bind(path)?))
}

/// A channel to the gRPC server on the unix socket `path`, connected lazily: nothing is dialled until the first
/// call, and after a broken connection the next call dials again. `connect_timeout` bounds each dial.
pub fn channel(path: PathBuf, connect_timeout: Duration) -> Channel {
    // The URI is a placeholder required by the HTTP/2 layer; the connector below ignores it.
    let endpoint = Endpoint::from_static("http://dmi.invalid").connect_timeout(connect_timeout);
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
    }))
}
