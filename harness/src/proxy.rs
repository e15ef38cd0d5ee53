//! A TCP fault proxy on a free loopback port in front of one upstream: pass, cut after N bytes,
//! stall, throttle, refuse or corrupt one byte, switchable at run time. Plain std threads.

mod pump;

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::error::HarnessError;

const ACCEPT_POLL: Duration = Duration::from_millis(2);
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the proxy does to traffic. Downstream is upstream -> client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Close each connection (both sides) once this many bytes went downstream on it: the client
    /// receives exactly `bytes` bytes, then EOF ("cut every 4 MiB"). Existing connections that are
    /// already past it are cut when the mode is set.
    CutAfter {
        /// Downstream bytes allowed per connection.
        bytes: u64,
    },
    /// Keep connections open but forward nothing, in either direction, until the mode changes.
    Stall,
    /// Throttle downstream to about this rate per connection (0 forwards nothing).
    Bandwidth {
        /// Downstream bytes per second.
        bytes_per_sec: u64,
    },
    /// Accept new connections and close them at once; existing connections are cut too.
    Refuse,
    /// Flip the lowest bit of the downstream byte at this offset of each connection's stream.
    Corrupt {
        /// 0-based offset in the connection's downstream stream.
        at_byte: u64,
    },
}

/// One proxied connection: both sockets, shared by its two pump threads.
#[derive(Debug)]
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    closed: AtomicBool,
    /// Bytes sent downstream on this connection so far.
    down_offset: AtomicU64,
}

impl Conn {
    fn cut(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    /// The mode and a generation bumped on every `set`.
    mode: Mutex<(Fault, u64)>,
    mode_changed: Condvar,
    shutdown: AtomicBool,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
    accepted: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn mode(&self) -> (Fault, u64) {
        *lock(&self.mode)
    }

    fn cut_all(&self) {
        for conn in lock(&self.conns).values() {
            conn.cut();
        }
        self.mode_changed.notify_all();
    }

    fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let handle = thread::Builder::new().name(name.to_owned()).spawn(f)?;
        let mut threads = lock(&self.threads);
        threads.retain(|h| !h.is_finished());
        threads.push(handle);
        Ok(())
    }
}

/// A TCP proxy on `127.0.0.1:<free port>` forwarding to one upstream address. Dropping it stops
/// accepting, cuts every connection and joins its threads; the port is free afterwards.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free loopback port in [`Fault::Pass`] mode. The upstream is connected per
    /// client connection, so it need not be up yet.
    pub fn start(upstream: SocketAddr) -> Result<FaultProxy, HarnessError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| HarnessError::io("bind fault proxy on 127.0.0.1:0", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("fault proxy local address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| HarnessError::io(format!("set {addr} non-blocking"), e))?;
        let shared = Arc::new(Shared {
            upstream,
            mode: Mutex::new((Fault::Pass, 0)),
            mode_changed: Condvar::new(),
            shutdown: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            bytes_down: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let acceptor_shared = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || accept_loop(&listener, &acceptor_shared))
            .map_err(|e| HarnessError::io(format!("spawn fault proxy thread for {addr}"), e))?;
        tracing::debug!(%addr, %upstream, "fault proxy listening");
        Ok(FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// `127.0.0.1:<port>`: point clients here instead of at the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The upstream it forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Switches the mode for new and existing connections: `Refuse` cuts every open connection,
    /// `CutAfter` cuts those already past the limit, `Stall` holds traffic from now on.
    pub fn set(&self, fault: Fault) {
        {
            let mut mode = lock(&self.shared.mode);
            mode.0 = fault;
            mode.1 = mode.1.wrapping_add(1);
        }
        tracing::debug!(proxy = %self.addr, ?fault, "fault mode set");
        match fault {
            Fault::Refuse => self.shared.cut_all(),
            Fault::CutAfter { bytes } => {
                for conn in lock(&self.shared.conns).values() {
                    if conn.down_offset.load(Ordering::SeqCst) >= bytes {
                        conn.cut();
                    }
                }
            }
            Fault::Pass | Fault::Stall | Fault::Bandwidth { .. } | Fault::Corrupt { .. } => {}
        }
        self.shared.mode_changed.notify_all();
    }

    /// The current mode.
    pub fn fault(&self) -> Fault {
        self.shared.mode().0
    }

    /// Closes every open connection now (both sides); the mode stays.
    pub fn cut_all(&self) {
        self.shared.cut_all();
    }

    /// Bytes forwarded upstream -> client since start.
    pub fn bytes_down(&self) -> u64 {
        self.shared.bytes_down.load(Ordering::SeqCst)
    }

    /// Bytes forwarded client -> upstream since start.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::SeqCst)
    }

    /// Client connections accepted since start (refused ones included).
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open through the proxy.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.shared.cut_all();
        // Connection threads may still register pump threads while we join: drain until empty.
        loop {
            let handles = std::mem::take(&mut *lock(&self.shared.threads));
            if handles.is_empty() {
                break;
            }
            for handle in handles {
                let _ = handle.join();
            }
            self.shared.cut_all();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut next_id: u64 = 0;
    while !shared.shutdown.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, peer)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                next_id = next_id.wrapping_add(1);
                if shared.mode().0 == Fault::Refuse {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let id = next_id;
                let conn_shared = Arc::clone(shared);
                let spawned = shared.spawn("fault-proxy-conn", move || {
                    open_connection(id, client, &conn_shared);
                });
                if let Err(e) = spawned {
                    tracing::warn!(%peer, error = %e, "fault proxy cannot spawn a connection thread");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "fault proxy accept failed");
                thread::sleep(ACCEPT_POLL * 5);
            }
        }
    }
}

/// Connects upstream, registers the connection, runs the up pump on a second thread and the down
/// pump on this one; unregisters when both are done.
fn open_connection(id: u64, client: TcpStream, shared: &Arc<Shared>) {
    let _ = client.set_nonblocking(false);
    let _ = client.set_nodelay(true);
    let upstream = match TcpStream::connect_timeout(&shared.upstream, UPSTREAM_CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(upstream = %shared.upstream, error = %e, "fault proxy upstream unreachable");
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let conn = Arc::new(Conn {
        client,
        upstream,
        closed: AtomicBool::new(false),
        down_offset: AtomicU64::new(0),
    });
    lock(&shared.conns).insert(id, Arc::clone(&conn));
    // Registered after Drop's cut_all, or while refusing: cut now.
    if shared.shutdown.load(Ordering::SeqCst) || shared.mode().0 == Fault::Refuse {
        conn.cut();
    }
    let up_conn = Arc::clone(&conn);
    let up_shared = Arc::clone(shared);
    let up = thread::Builder::new()
        .name("fault-proxy-up".into())
        .spawn(move || pump::up(&up_conn, &up_shared));
    match up {
        Ok(up) => {
            pump::down(&conn, shared);
            let _ = up.join();
        }
        Err(e) => {
            tracing::warn!(error = %e, "fault proxy cannot spawn the upstream pump");
            conn.cut();
        }
    }
    lock(&shared.conns).remove(&id);
}
