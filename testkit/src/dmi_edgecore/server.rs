//! edgecore's DMI server (edge/pkg/devicetwin/dmiserver/server.go): its socket, its rate limit, its validation and
//! crashes, and its connections, which die with it.
#![allow(clippy::disallowed_types)] // edgecore's side must decode the raw requests a mapper sends, incomplete ones too

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use serde_json::{Map, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use twinflash_dmi::pb;
use twinflash_dmi::pb::device_manager_service_server::DeviceManagerService;

use super::convert::{convert_device, convert_model, overridden};
use super::{DmiLogKind, Inner, RATE_BURST, RATE_PER_SEC, name_of, random, system_ms};

/// edgecore's DMI socket as `CreateListener` makes it (vendor/k8s.io/cri-client/pkg/util/util_unix.go; spec §3):
/// the old file unlinked, the directory created `0750` if missing, the socket bound under a temporary name in it
/// and renamed into place (a new inode at every start). Go's umask-default permissions, not twinflash's `0600`.
pub(super) fn create_listener(path: &Path) -> io::Result<UnixListenerStream> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)?;
    let temp = dir.join(format!("{}", random() % 1_000_000_000));
    let listener = UnixListener::bind(&temp)?;
    std::fs::rename(&temp, path)?;
    Ok(UnixListenerStream::new(listener))
}

/// golang.org/x/time/rate's token bucket as edgecore configures it (e16): full at start, one token per second.
#[derive(Debug)]
pub(super) struct Limiter {
    tokens: f64,
    last: Instant,
}

impl Limiter {
    pub(super) fn new() -> Limiter {
        Limiter {
            tokens: RATE_BURST,
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * RATE_PER_SEC;
        self.tokens = (self.tokens + refill).min(RATE_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A connection that fails every read and write once edgecore is killed: an abrupt death, not a graceful
/// shutdown (the mapper sees the connection drop, e04).
pub(super) struct KillableIo {
    pub(super) io: UnixStream,
    pub(super) killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl KillableIo {
    fn dead(&mut self, cx: &mut Context<'_>) -> bool {
        self.killed.as_mut().poll(cx).is_ready()
    }
}

fn reset() -> io::Error {
    io::Error::from(io::ErrorKind::BrokenPipe)
}

impl AsyncRead for KillableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.dead(cx) {
            // The peer of a dead process reads end-of-file.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.dead(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.dead(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for KillableIo {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// The DeviceManagerService of one run (one rate limiter per start, as StartDMIServer makes one).
pub(super) struct Server {
    pub(super) inner: Arc<Inner>,
    pub(super) limiter: Mutex<Limiter>,
    pub(super) kill: CancellationToken,
}

fn unknown(message: String) -> tonic::Status {
    // All DMI server errors are plain Go errors: gRPC code Unknown (spec §3).
    tonic::Status::unknown(message)
}

fn dead() -> tonic::Status {
    tonic::Status::unavailable("error reading from server: EOF")
}

impl Server {
    fn allow(&self) -> bool {
        self.limiter.lock().unwrap().allow()
    }

    fn limited(&self, message: String) -> tonic::Status {
        self.inner.count(|c| c.rate_limited += 1);
        self.inner.log(DmiLogKind::RateLimited, message.clone());
        unknown(message)
    }

    fn refused(&self, message: String) -> tonic::Status {
        self.inner.log(DmiLogKind::Refused, message.clone());
        unknown(message)
    }

    fn crash(&self, why: &str) -> tonic::Status {
        self.kill.cancel();
        self.inner.crash(why);
        dead()
    }
}

#[tonic::async_trait]
impl DeviceManagerService for Server {
    /// server.go MapperRegister (spec §4; a02, a03, e04c, e07, e16).
    async fn mapper_register(
        &self,
        request: tonic::Request<pb::MapperRegisterRequest>,
    ) -> Result<tonic::Response<pb::MapperRegisterResponse>, tonic::Status> {
        if self.kill.is_cancelled() {
            return Err(dead());
        }
        let inner = &self.inner;
        inner.count(|c| c.mapper_register += 1);
        let req = request.into_inner();
        // The limiter is asked first, and its error message already dereferences the mapper (e04c, e16).
        let allowed = self.allow();
        let Some(mapper) = req.mapper else {
            return Err(self.crash("MapperRegister without mapper (e04c)"));
        };
        if !allowed {
            return Err(self.limited(format!(
                "fail to register mapper because of too many request: {}",
                mapper.name
            )));
        }
        if mapper.protocol.is_empty() {
            return Err(self.refused(format!(
                "fail to register mapper {} because the protocol is nil",
                mapper.name
            )));
        }
        // Saved before the withData check: even a withData=false mapper gets a client after a restart (e14).
        inner
            .store
            .lock()
            .unwrap()
            .mappers
            .insert(mapper.name.clone(), mapper.clone());
        inner.log(
            DmiLogKind::Lifecycle,
            format!(
                "mapper {} registered (protocol {}, address {:?}, withData {})",
                mapper.name,
                mapper.protocol,
                String::from_utf8_lossy(&mapper.address),
                req.with_data
            ),
        );
        if !req.with_data {
            // a03: empty answer, and NO client (e01).
            return Ok(tonic::Response::new(pb::MapperRegisterResponse::default()));
        }
        let mut pairs = Vec::new();
        {
            let store = inner.store.lock().unwrap();
            for (key, device) in &store.devices {
                let (dev, model) = match overridden(device, &store.models) {
                    Ok(x) => x,
                    Err(e) => {
                        inner.log(
                            DmiLogKind::Skipped,
                            format!("fail to get overridden device {key} from cache: {e}"),
                        );
                        continue;
                    }
                };
                if dev["spec"]["protocol"]["protocolName"].as_str()
                    != Some(mapper.protocol.as_str())
                {
                    continue;
                }
                match convert_device(&dev) {
                    Ok(d) => pairs.push((random(), d, convert_model(&model))),
                    Err(e) => inner.log(
                        DmiLogKind::Skipped,
                        format!("fail to convert device {} with err: {e}", name_of(&dev)),
                    ),
                }
            }
        }
        // Go map iteration: random order, modelList[i] belongs to deviceList[i] (a02).
        pairs.sort_by_key(|p| p.0);
        let (device_list, model_list) = pairs.into_iter().map(|(_, d, m)| (d, m)).unzip();
        inner
            .store
            .lock()
            .unwrap()
            .clients
            .insert(mapper.protocol.clone(), mapper.address.clone());
        Ok(tonic::Response::new(pb::MapperRegisterResponse {
            model_list,
            device_list,
        }))
    }

    /// server.go ReportDeviceStatus (spec §5; d02, e02, e03, e04a, e04b, e16).
    async fn report_device_status(
        &self,
        request: tonic::Request<pb::ReportDeviceStatusRequest>,
    ) -> Result<tonic::Response<pb::ReportDeviceStatusResponse>, tonic::Status> {
        if self.kill.is_cancelled() {
            return Err(dead());
        }
        self.inner.count(|c| c.report_status += 1);
        let req = request.into_inner();
        if !self.allow() {
            return Err(self.limited(format!(
                "fail to report device status because of too many request: {}",
                req.device_name
            )));
        }
        let twins = req.reported_device.map(|d| d.twins).unwrap_or_default();
        if twins.is_empty() {
            return Err(
                self.refused("ReportDeviceStatusRequest does not have twin data".to_owned())
            );
        }
        let mut contents = Vec::new();
        for twin in &twins {
            // CreateMessageTwinUpdate dereferences both TwinProperty messages (e04a, e04b).
            let (Some(od), Some(rep)) = (&twin.observed_desired, &twin.reported) else {
                return Err(self.crash(&format!(
                    "ReportDeviceStatus of {} with a twin without observedDesired or reported (e04a/e04b)",
                    req.device_name
                )));
            };
            // d02: one twin/update per twin, expected = observedDesired, actual = reported, no metadata.
            let mut t = Map::new();
            t.insert(
                twin.property_name.clone(),
                json!({"expected": {"value": od.value}, "actual": {"value": rep.value}}),
            );
            let content = json!({"event_id": "", "timestamp": system_ms(), "twin": t});
            contents.push(serde_json::to_vec(&content).unwrap_or_default());
        }
        // OK goes back before any twin is applied; each twin is its own message, in any order (d02, spec §6.2).
        for content in contents {
            let (inner, ns, name) = (
                self.inner.clone(),
                req.device_namespace.clone(),
                req.device_name.clone(),
            );
            let yields = random() % 4;
            tokio::spawn(async move {
                for _ in 0..yields {
                    tokio::task::yield_now().await;
                }
                inner.apply_twin(&ns, &name, &content);
            });
        }
        Ok(tonic::Response::new(pb::ReportDeviceStatusResponse {}))
    }

    /// server.go ReportDeviceStates (spec §5; d04, e05, e06, e10, e16).
    async fn report_device_states(
        &self,
        request: tonic::Request<pb::ReportDeviceStatesRequest>,
    ) -> Result<tonic::Response<pb::ReportDeviceStatesResponse>, tonic::Status> {
        if self.kill.is_cancelled() {
            return Err(dead());
        }
        self.inner.count(|c| c.report_states += 1);
        let req = request.into_inner();
        if !self.allow() {
            return Err(self.limited(format!(
                "fail to report device states because of too many request: {}",
                req.device_name
            )));
        }
        if req.state.is_empty() || req.device_name.is_empty() {
            return Err(self.refused("ReportDeviceStatesRequest is invalid data".to_owned()));
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            inner.apply_state(&req.device_namespace, &req.device_name, &req.state);
        });
        Ok(tonic::Response::new(pb::ReportDeviceStatesResponse {}))
    }
}
