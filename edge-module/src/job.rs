//! The job of one device: looks at its journaled state, does the next step (fetch, check, flash, verify), journals
//! the result and reports it. Level-triggered (see docs/decisions/0002-edge-agent-design.md).
//!
//! This file is the driver; every decision is a pure step of `plan` (`next_step`, `verdict`, `preflight`,
//! `after_flash`). A journal that cannot be written is a state, not a loss: the job reports `waiting:disk-full` and
//! retries the same write until it lands.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt_schema::clip::clip;
use mqtt_schema::{ErrorCode, FirmwareRef, FirmwareState};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use twinflash_artifact::fetch::{FetchEvent, Fetched, Fetcher};
use twinflash_flasher::{FlashRequest, Progress};

use crate::device::Device;
use crate::metrics::Metrics;
use crate::plan::{
    self, AfterFlash, FlashResult, JobState, Outcome, Preflight, ReadBack, Step, Verdict,
};
use crate::progress::Throttle;
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
}

/// Runs the job of `device` until shutdown.
pub async fn run(device: Arc<Device>, ctx: Arc<JobContext>) {
    let mut last: Option<Report> = None;
    loop {
        if ctx.shutdown.is_cancelled() {
            return;
        }
        let state = device.state();
        let installed = installed_pair(&state);
        let settled = match plan::next_step(&state, ctx.max_attempts) {
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
                install(&device, &ctx, &reference, attempt).await;
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
/// loop of [`run`] looks at the journaled state again.
async fn install(device: &Arc<Device>, ctx: &JobContext, reference: &str, attempt: u32) {
    // Parsed once here, and carried to the fetcher.
    let firmware = match FirmwareRef::parse(reference) {
        Ok(firmware) => firmware,
        Err(e) => {
            tracing::warn!(device = device.id(), reference = %clip(reference), error = %e, "intent is not a digest-pinned reference");
            let outcome = Outcome::of(ErrorCode::InvalidReference);
            return settle(device, ctx, reference, outcome).await;
        }
    };
    progress(device, ctx, FirmwareState::Pending);
    let Some(fetched) = fetch(device, ctx, &firmware, attempt).await else {
        return;
    };
    progress(device, ctx, FirmwareState::Verifying);
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
        return settle(device, ctx, reference, Outcome::of(code)).await;
    }
    let Some(permit) = start_flash(device, ctx, reference).await else {
        return;
    };
    let result = flash(device, ctx, &fetched, reference).await;
    drop(permit);
    device.lock().flashing = false;
    let max = ctx.max_attempts;
    let after = durable(device, ctx, |s| {
        plan::after_flash(s, reference, attempt, max, result.clone())
    })
    .await;
    if let Some(AfterFlash::RetryLater { code }) = after {
        progress(device, ctx, FirmwareState::Waiting(code.into()));
        backoff(ctx, device, attempt).await;
    }
}

/// Fetches and verifies the artifact. None when the fetch was cancelled (a newer intent, shutdown) or failed; a
/// failure is settled or waited out here.
async fn fetch(
    device: &Device,
    ctx: &JobContext,
    firmware: &FirmwareRef,
    attempt: u32,
) -> Option<Fetched> {
    let reference = firmware.as_str();
    let cancel = ctx.shutdown.child_token();
    {
        let mut inner = device.lock();
        if inner.state.wanted.as_deref() != Some(reference) {
            return None;
        }
        inner.download_cancel = Some(cancel.clone());
    }
    let permit = tokio::select! {
        p = ctx.downloads.clone().acquire_owned() => p,
        () = cancel.cancelled() => return None,
    };
    let mut throttle = Throttle::default();
    let started = Instant::now();
    let on_event = |ev| match ev {
        FetchEvent::Progress { done, total } => {
            let pct = percent(done, total);
            if throttle.admit(Instant::now(), "downloading", pct) {
                progress(device, ctx, FirmwareState::Downloading(pct));
            }
        }
        FetchEvent::Waiting { code, .. } => {
            throttle.reset();
            progress(device, ctx, FirmwareState::Waiting(code.into()));
        }
    };
    let fetched = ctx.fetcher.fetch(firmware, on_event, &cancel).await;
    drop(permit);
    device.lock().download_cancel = None;
    match fetched {
        Ok(f) => {
            ctx.metrics.add_bytes_fetched(f.bytes_received);
            tracing::info!(device = device.id(), reference, bytes = f.bytes_received, secs = started.elapsed().as_secs_f32(), source = %f.source, "fetched and verified");
            Some(f)
        }
        Err(_) if cancel.is_cancelled() => None,
        Err(e) => {
            let code = e.code();
            tracing::warn!(device = device.id(), reference, %code, error = %e, "fetch failed");
            if plan::verdict(code, false) == Verdict::Retry {
                progress(device, ctx, FirmwareState::Waiting(code.into()));
                backoff(ctx, device, attempt).await;
            } else {
                settle(device, ctx, reference, Outcome::of(code)).await;
            }
            None
        }
    }
}

/// Takes a flash permit and journals the start of the flash. None when the intent changed meanwhile.
async fn start_flash(
    device: &Device,
    ctx: &JobContext,
    reference: &str,
) -> Option<OwnedSemaphorePermit> {
    let permit = ctx.flashes.clone().acquire_owned().await.ok()?;
    {
        let mut inner = device.lock();
        if inner.state.wanted.as_deref() != Some(reference) {
            return None;
        }
        inner.flashing = true;
    }
    let started = durable(device, ctx, |s| {
        s.flash_started = Some(reference.to_owned())
    })
    .await;
    if started.is_none() {
        device.lock().flashing = false;
        return None;
    }
    Some(permit)
}

/// Runs the backend (never interrupted once started; a newer intent waits for it) and says how it ended.
async fn flash(
    device: &Device,
    ctx: &JobContext,
    fetched: &Fetched,
    reference: &str,
) -> FlashResult {
    let art = &fetched.artifact;
    let req = FlashRequest {
        image: fetched.path.clone(),
        format: art.format,
        base_address: art.base_address,
        chip: art.chip.clone(),
        reference: reference.to_owned(),
        version: art.version.clone(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let started = Instant::now();
    let flash = device.flasher.flash(&req, tx, CancellationToken::new());
    tokio::pin!(flash);
    let mut throttle = Throttle::default();
    // The stage is reported when it starts, whatever the backend's progress events do.
    throttle.admit(Instant::now(), "flashing", 0);
    progress(device, ctx, FirmwareState::Flashing(0));
    let result = loop {
        tokio::select! {
            r = &mut flash => break r,
            Some(p) = rx.recv() => {
                if throttle.admit(Instant::now(), "flashing", p.percent) {
                    progress(device, ctx, FirmwareState::Flashing(p.percent));
                }
            }
        }
    };
    let kind = device.flasher.kind();
    ctx.metrics
        .observe_flash(kind, started.elapsed(), result.is_ok());
    match result {
        Ok(outcome) => {
            tracing::info!(device = device.id(), reference = %req.reference, version = %art.version, bytes = outcome.bytes, unchanged = outcome.unchanged, "flashed and verified");
            FlashResult::Verified {
                version: art.version.clone(),
            }
        }
        Err(e) => {
            let code = e.code();
            let verdict = plan::verdict(code, e.is_transient());
            tracing::warn!(device = device.id(), reference = %req.reference, %code, ?verdict, error = %e, "flash did not complete");
            let read_back = if verdict == Verdict::Fail && device.flasher.reads_back() {
                let now = device.flasher.installed().await.ok().flatten();
                Some(now.map(|i| ReadBack {
                    reference: i.reference,
                    version: i.version,
                }))
            } else {
                None
            };
            FlashResult::Error {
                code,
                verdict,
                read_back,
            }
        }
    }
}

/// Journals a change of the state, retrying while the journal cannot be written: the device reports
/// `waiting:<code>` (`waiting:disk-full` on a full disk) until the write lands. None when shutdown came first.
async fn durable<R>(
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

fn progress(device: &Device, ctx: &JobContext, state: FirmwareState) {
    let installed = installed_pair(&device.state());
    put(device, ctx, &Report { state, installed });
}

/// Waits before a retry: exponential from `retry_base`, capped at 30 s, with jitter; a new intent or shutdown ends
/// the wait early.
async fn backoff(ctx: &JobContext, device: &Device, attempt: u32) {
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

fn percent(done: u64, total: u64) -> u8 {
    if total == 0 {
        return 100;
    }
    u8::try_from(u128::from(done.min(total)) * 100 / u128::from(total)).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_bounded() {
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(50, 200), 25);
        assert_eq!(percent(300, 200), 100);
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
    }
}
