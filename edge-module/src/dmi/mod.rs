//! DMI mode: twinflash-edge as KubeEdge's device mapper of protocol `twinflash` (docs/operations.md,
//! "KubeEdge-native (DMI)"; docs/kubeedge.md section 11).
//!
//! edgecore hands the agent its Devices (with their flasher settings and desired `firmware`) over the agent's own
//! socket ([`server`]); every call is journaled ([`store`]) and applied by one manager task ([`fleet`]), which
//! runs the same jobs, journals and outbox as the MQTT mode. Reports go back through edgecore's DMI server
//! ([`reporter`]), within the node's rate limit. What a Device's config data and desired value mean is pure
//! ([`spec`]).

pub mod fleet;
pub mod reporter;
pub mod server;
pub mod spec;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use twinflash_dmi::mapper::{EdgecoreClient, MapperInfo};

use crate::config::EdgeConfig;
use crate::metrics::Metrics;
use crate::report::ReportQueue;

/// The DMI tasks started, and why they could not be.
#[derive(Debug, thiserror::Error)]
pub enum DmiError {
    /// The mapper socket cannot be created: another process serves it (`socket-in-use`), something else is at its
    /// path (`socket-path-taken`), or another failure (`socket`). Nothing at the path is deleted.
    #[error(
        "{}: cannot serve the mapper socket {path}: {source}",
        socket_code(source)
    )]
    Socket {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// `mapper_socket` is edgecore's own `dmi_socket` (`socket-is-dmi-socket`): serving it would cut every mapper
    /// of the node off edgecore.
    #[error(
        "socket-is-dmi-socket: kubeedge.mapper_socket {0} is edgecore's dmi_socket; refusing to serve it"
    )]
    SameSocket(std::path::PathBuf),
    /// The registration settings are wrong.
    #[error(transparent)]
    Info(#[from] twinflash_dmi::mapper::MapperInfoError),
}

/// The stable code of a mapper socket that cannot be served.
fn socket_code(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "socket-in-use",
        std::io::ErrorKind::AlreadyExists => "socket-path-taken",
        _ => "socket",
    }
}

/// Starts the mapper service, the manager and the reporter on `tasks`; they stop when `stop` is cancelled.
pub fn start(
    cfg: &EdgeConfig,
    fleet: Arc<fleet::Fleet>,
    reports: Arc<ReportQueue>,
    metrics: Arc<Metrics>,
    tasks: &mut JoinSet<()>,
    stop: CancellationToken,
) -> Result<(), DmiError> {
    let k = &cfg.kubeedge;
    let socket = k.mapper_socket(&cfg.state_dir);
    if socket == k.dmi_socket {
        return Err(DmiError::SameSocket(socket));
    }
    let info = MapperInfo::new(
        &k.mapper_name,
        env!("CARGO_PKG_VERSION"),
        &k.protocol,
        &socket,
    )?;
    let incoming = twinflash_dmi::transport::bind(&socket).map_err(|source| DmiError::Socket {
        path: socket.clone(),
        source,
    })?;
    let service = twinflash_dmi::pb::device_mapper_service_server::DeviceMapperServiceServer::new(
        server::MapperService::new(fleet.clone()),
    )
    .max_decoding_message_size(
        cfg.limits
            .max_message_bytes
            .min(twinflash_dmi::transport::MAX_MESSAGE),
    );
    let server_stop = stop.clone();
    tasks.spawn(twinflash_dmi::transport::serve(
        incoming,
        service,
        server_stop.cancelled_owned(),
    ));
    let budget = reporter::Budget {
        rate: k.dmi_calls_per_sec,
        burst: k.dmi_burst,
        spacing: Duration::from_millis(k.report_spacing_ms),
        period: Duration::from_secs(cfg.twin.anti_entropy_secs.max(1)),
        confirm_after: (k.confirm_after_ms > 0).then(|| Duration::from_millis(k.confirm_after_ms)),
    };
    // The reporter confirms every settled state itself (see its module doc): the outbox's confirmation of the first
    // one after a start would only cost a call more.
    reports.set_first_confirmation(budget.confirm_after.is_none());
    let client = EdgecoreClient::new(k.dmi_socket.clone(), Duration::from_secs(2));
    let reporter = reporter::Reporter::new(
        fleet,
        reports,
        metrics,
        (client, k.dmi_socket.clone()),
        info,
        budget,
    );
    tasks.spawn(reporter.run(stop));
    tracing::info!(socket = %socket.display(), edgecore = %k.dmi_socket.display(), protocol = %k.protocol, "serving as a DMI mapper");
    Ok(())
}
