//! The job of one device: looks at its journaled state, does the next step (fetch, check, flash, verify), journals
//! the result and reports it. Level-triggered (see docs/decisions/0002-edge-agent-design.md).
//!
//! This file is the driver, `fetch` and `flash` its two steps with I/O; every decision is a pure step of `plan`
//! (`next_step`, `verdict`, `preflight`, `after_flash`). A journal that cannot be written is a state, not a loss: the job reports `waiting:disk-full` and
//! retries the same write until it lands.

use std::sync::Arc;
use std::time::Duration;

use mqtt_schema::clip::clip;
use mqtt_schema::{ErrorCode, FirmwareRef, FirmwareState};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use twinflash_artifact::fetch::Fetcher;

mod confirm;
mod fetch;
mod flash;

use confirm::{Prepared, confirm, prepare, revert};
use fetch::fetch;
use flash::{flash, start_flash};

use crate::device::Device;
use crate::metrics::Metrics;
use crate::plan::{self, AfterFlash, JobState, Outcome, Preflight, Step};
use crate::report::{Report, ReportQueue};

/// What every job shares.
#[derive(Debug)]
pub struct JobContext {
    /// The artifact fetcher (one cache for the node).
    pub fetcher: Arc<Fetcher>,
    /// Downloads running at once.
    pub downloads: Arc<Semaphore>,
    /// Flashes running at once.
    pub flashes: Arc<Semaphore>,
    /// The outbox.
    pub reports: Arc<ReportQueue>,
    /// Flash attempts before `failed`.
    pub max_attempts: u32,
    /// The largest artifact accepted (`registry.max_artifact_bytes`).
    pub max_artifact_bytes: u64,
    /// Cancelled on SIGTERM/SIGINT: downloads checkpoint and stop, flashes run to their end.
    pub shutdown: CancellationToken,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Delay before retrying a transient failure (doubles up to 30 s).
    pub retry_base: Duration,
    /// Progress of a stage is reported at most once per this interval (`twin.progress_interval_ms`).
    pub progress_interval: Duration,
}

/// Runs the job of `device` until shutdown.
pub async fn run(device: Arc<Device>, ctx: Arc<JobContext>) {
    let mut last: Option<Report> = None;
    // A confirmation check made ready before a flash, for the confirm step that follows it.
    let mut prepared: Option<Prepared> = None;
    loop {
        if ctx.shutdown.is_cancelled() || device.is_retired() {
            return;
        }
        let state = device.state();
        let installed = installed_pair(&state);
        let step = plan::next_step(&state, ctx.max_attempts);
        let prepared_now = prepared.take();
        let settled = match step {
            Step::Idle => Report {
                state: FirmwareState::Idle,
                installed,
            },
            Step::Converged { reference } => Report {
                state: FirmwareState::Installed,
                installed: Some((
                    reference,
                    state.installed_version.clone().unwrap_or_default(),
                )),
            },
            Step::Settled { outcome, .. } => Report {
                state: outcome.state(),
                installed,
            },
            Step::Install { reference, attempt } => {
                last = None;
                prepared = install(&device, &ctx, &reference, attempt).await;
                continue;
            }
            Step::Confirm { firmware } => {
                last = None;
                confirm(&device, &ctx, &firmware, prepared_now).await;
                continue;
            }
            Step::Revert { to, failed, code } => {
                last = None;
                revert(&device, &ctx, &to, &failed, code).await;
                continue;
            }
        };
        if last.as_ref() != Some(&settled) {
            ctx.metrics
                .set_job_state(device.id(), &settled.state.to_string());
            put(&device, &ctx, &settled);
            last = Some(settled);
        }
        tokio::select! {
            () = device.woken() => {}
            () = ctx.shutdown.cancelled() => return,
        }
    }
}

/// Installs `reference` (attempt `attempt`): fetch, check, flash, journal. Returns when the attempt is over; the
/// loop of [`run`] looks at the journaled state again. Returns the device's confirmation check, made ready before
/// the flash (see [`prepare`]).
async fn install(
    device: &Arc<Device>,
    ctx: &JobContext,
    reference: &str,
    attempt: u32,
) -> Option<Prepared> {
    // Parsed once here, and carried to the fetcher.
    let firmware = match FirmwareRef::parse(reference) {
        Ok(firmware) => firmware,
        Err(e) => {
            tracing::warn!(device = device.id(), reference = %clip(reference), error = %e, "intent is not a digest-pinned reference");
            let outcome = Outcome::of(ErrorCode::InvalidReference);
            settle(device, ctx, reference, outcome).await;
            return None;
        }
    };
    // A retry after a transient flash error is not news: it reports its flash start and how it ends, not pending
    // and verifying again (each report costs edgecore a write, a result, a document, a delta and a cloud sync).
    if attempt == 1 {
        progress(device, ctx, FirmwareState::Pending);
    }
    let fetched = fetch(device, ctx, &firmware, attempt).await?;
    if attempt == 1 || fetched.bytes_received > 0 {
        progress(device, ctx, FirmwareState::Verifying);
    }
    let art = &fetched.artifact;
    let installed_version = device.state().installed_version;
    let checked = plan::preflight(&Preflight {
        chip_fits: device.flasher.check_chip(&art.chip).is_ok(),
        allow_downgrade: device.cfg.allow_downgrade,
        installed_version: installed_version.as_deref(),
        offered_version: &art.version,
        image_bytes: art.size,
        max_bytes: ctx.max_artifact_bytes,
    });
    if let Err(code) = checked {
        tracing::warn!(device = device.id(), reference, %code, chip = %art.chip, version = %art.version, installed = ?installed_version, "artifact refused before flashing");
        settle(device, ctx, reference, Outcome::of(code)).await;
        return None;
    }
    let located = match confirm::precheck(device, &fetched).await {
        Ok(located) => located,
        Err(why) => {
            tracing::warn!(device = device.id(), reference, error = %why, "the device's confirmation check cannot judge this artifact; refused before flashing");
            settle(
                device,
                ctx,
                reference,
                Outcome::of(ErrorCode::InvalidConfig),
            )
            .await;
            return None;
        }
    };
    let permit = start_flash(device, ctx, reference).await?;
    let prepared = prepare(device, Ok(located), reference).await;
    let result = flash(device, ctx, &fetched, reference).await;
    drop(permit);
    device.lock().flashing = false;
    let max = ctx.max_attempts;
    let confirms = device.cfg.confirm.is_some();
    let after = durable(device, ctx, |s| {
        plan::after_flash(s, reference, attempt, max, result.clone(), confirms)
    })
    .await;
    if let Some(AfterFlash::RetryLater { code }) = after {
        progress(device, ctx, FirmwareState::Waiting(code.into()));
        backoff(ctx, device, attempt).await;
    }
    prepared
}

/// Journals a change of the state, retrying while the journal cannot be written: the device reports
/// `waiting:<code>` (`waiting:disk-full` on a full disk) until the write lands. None when shutdown came first.
pub(super) async fn durable<R>(
    device: &Device,
    ctx: &JobContext,
    mut change: impl FnMut(&mut JobState) -> R,
) -> Option<R> {
    let mut delay = Duration::from_millis(200);
    let mut logged = false;
    loop {
        match device.update_with(&mut change) {
            Ok(r) => {
                if logged {
                    tracing::info!(device = device.id(), "journal writable again");
                }
                return Some(r);
            }
            Err(e) => {
                if !logged {
                    tracing::error!(device = device.id(), code = %e.code(), error = %e, "cannot journal; retrying until it can");
                    logged = true;
                }
                progress(device, ctx, FirmwareState::Waiting(e.code().into()));
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = ctx.shutdown.cancelled() => return None,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Ends the intent `reference` with an outcome (journaled; the loop reports it).
async fn settle(device: &Device, ctx: &JobContext, reference: &str, outcome: Outcome) {
    tracing::warn!(device = device.id(), reference = %clip(reference), outcome = %outcome.state(), "intent ended");
    durable(device, ctx, |s| {
        if s.wanted.as_deref() == Some(reference) {
            s.outcome = Some((reference.to_owned(), outcome));
        }
    })
    .await;
}

fn installed_pair(state: &JobState) -> Option<(String, String)> {
    state
        .installed
        .clone()
        .map(|r| (r, state.installed_version.clone().unwrap_or_default()))
}

/// Queues a report; an outbox that cannot be written is logged (the journal still holds the truth, and the state
/// is reported again after the next reconnect).
fn put(device: &Device, ctx: &JobContext, report: &Report) {
    device.report(&ctx.reports, report.clone());
    ctx.metrics.set_outbox_depth(ctx.reports.depth());
}

pub(super) fn progress(device: &Device, ctx: &JobContext, state: FirmwareState) {
    let installed = installed_pair(&device.state());
    put(device, ctx, &Report { state, installed });
}

/// Waits before a retry: exponential from `retry_base`, capped at 30 s, with jitter; a new intent or shutdown ends
/// the wait early.
pub(super) async fn backoff(ctx: &JobContext, device: &Device, attempt: u32) {
    let exp = ctx.retry_base.saturating_mul(1u32 << attempt.min(10));
    let capped = exp.min(Duration::from_secs(30));
    let jitter = rand::random_range(0.5..1.0);
    let wait = capped.mul_f64(jitter);
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = device.woken() => device.wake(),
        () = ctx.shutdown.cancelled() => {}
    }
}
