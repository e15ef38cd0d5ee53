//! The job of one device: looks at its journaled state, does the next step (fetch, check, flash, verify), journals
//! the result and reports it. Level-triggered (see docs/decisions/0002-edge-agent-design.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt_schema::ErrorCode;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use twinflash_artifact::fetch::{FetchEvent, Fetcher};
use twinflash_flasher::{FlashRequest, Progress};

use crate::device::Device;
use crate::metrics::Metrics;
use crate::plan::{self, Outcome, Step};
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
    /// Cancelled on SIGTERM/SIGINT: downloads checkpoint and stop, flashes run to their end.
    pub shutdown: CancellationToken,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Delay before retrying a transient flash failure (doubles up to 30 s).
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
                state: "idle".into(),
                installed,
                terminal: false,
            },
            Step::Converged { reference } => Report {
                state: "installed".into(),
                installed: Some((
                    reference,
                    state.installed_version.clone().unwrap_or_default(),
                )),
                terminal: true,
            },
            Step::Settled { outcome, .. } => Report {
                state: outcome_state(&outcome),
                installed,
                terminal: true,
            },
            Step::Install { reference, attempt } => {
                last = None;
                install(&device, &ctx, &reference, attempt).await;
                continue;
            }
        };
        if last.as_ref() != Some(&settled) {
            put(&device, &ctx, &settled);
            last = Some(settled);
        }
        ctx.metrics.set_job_state(device.id(), &last_state(&last));
        tokio::select! {
            () = device.woken() => {}
            () = ctx.shutdown.cancelled() => return,
        }
    }
}

fn last_state(last: &Option<Report>) -> String {
    last.as_ref()
        .map_or_else(|| "idle".to_owned(), |r| r.state.clone())
}

fn installed_pair(state: &plan::JobState) -> Option<(String, String)> {
    state
        .installed
        .clone()
        .map(|r| (r, state.installed_version.clone().unwrap_or_default()))
}

fn outcome_state(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Failed { code } => format!("failed:{code}"),
        Outcome::Rejected { code } => format!("rejected:{code}"),
    }
}

/// Queues a report; an outbox that cannot be written is logged (the journal still holds the truth, and the state
/// is reported again after the next reconnect).
fn put(device: &Device, ctx: &JobContext, report: &Report) {
    device.report(&ctx.reports, report.clone());
    ctx.metrics.set_outbox_depth(ctx.reports.depth());
}

fn progress(device: &Device, ctx: &JobContext, state: String) {
    let installed = installed_pair(&device.state());
    put(
        device,
        ctx,
        &Report {
            state,
            installed,
            terminal: false,
        },
    );
}

/// Ends the intent `reference` with an outcome (journaled; the loop reports it).
fn settle(device: &Device, reference: &str, outcome: Outcome) {
    tracing::warn!(device = device.id(), reference, outcome = %outcome_state(&outcome), "intent ended");
    let r = device.update(|s| {
        if s.wanted.as_deref() == Some(reference) {
            s.outcome = Some((reference.to_owned(), outcome));
        }
    });
    if let Err(e) = r {
        tracing::error!(device = device.id(), code = %e.code(), error = %e, "cannot journal outcome");
    }
}

fn rejected(code: ErrorCode) -> Outcome {
    Outcome::Rejected {
        code: code.as_str().to_owned(),
    }
}

fn failed(code: ErrorCode) -> Outcome {
    Outcome::Failed {
        code: code.as_str().to_owned(),
    }
}

/// Codes that say the intent itself is unacceptable (never retried until it changes).
fn is_rejection(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::InvalidReference
            | ErrorCode::UnsupportedArtifact
            | ErrorCode::ChipMismatch
            | ErrorCode::DowngradeRefused
            | ErrorCode::TooLarge
    )
}

async fn install(device: &Arc<Device>, ctx: &JobContext, reference: &str, attempt: u32) {
    let id = device.id().to_owned();
    let firmware = match mqtt_schema::FirmwareRef::parse(reference) {
        Ok(firmware) => firmware,
        Err(e) => {
            tracing::warn!(device = %id, reference, error = %e, "intent is not a digest-pinned reference");
            settle(device, reference, rejected(ErrorCode::InvalidReference));
            return;
        }
    };
    progress(device, ctx, "pending".into());

    // Fetch: cancelled by a newer intent or by shutdown (the partial stays and is resumed later).
    let cancel = ctx.shutdown.child_token();
    {
        let mut inner = device.lock();
        if inner.state.wanted.as_deref() != Some(reference) {
            return;
        }
        inner.download_cancel = Some(cancel.clone());
    }
    let permit = tokio::select! {
        p = ctx.downloads.clone().acquire_owned() => p,
        () = cancel.cancelled() => return,
    };
    let mut throttle = Throttle::default();
    let started = Instant::now();
    let fetched = ctx
        .fetcher
        .fetch(
            &firmware,
            |ev| match ev {
                FetchEvent::Progress { done, total } => {
                    let pct = percent(done, total);
                    if throttle.admit(Instant::now(), "downloading", pct) {
                        progress(device, ctx, format!("downloading:{pct}"));
                    }
                }
                FetchEvent::Waiting { code, .. } => {
                    throttle.reset();
                    progress(device, ctx, format!("waiting:{code}"));
                }
            },
            &cancel,
        )
        .await;
    drop(permit);
    device.lock().download_cancel = None;
    let fetched = match fetched {
        Ok(f) => f,
        Err(_) if cancel.is_cancelled() => return,
        Err(e) => {
            let code = e.code();
            tracing::warn!(device = %id, reference, %code, error = %e, "fetch failed");
            settle(
                device,
                reference,
                if is_rejection(code) {
                    rejected(code)
                } else {
                    failed(code)
                },
            );
            return;
        }
    };
    ctx.metrics.add_bytes_fetched(fetched.bytes_received);
    tracing::info!(device = %id, reference, bytes = fetched.bytes_received, secs = started.elapsed().as_secs_f32(), source = %fetched.source, "fetched and verified");
    progress(device, ctx, "verifying".into());

    // Checks on the artifact against the device.
    let art = &fetched.artifact;
    if let Err(e) = device.flasher.check_chip(&art.chip) {
        tracing::warn!(device = %id, reference, artifact_chip = %art.chip, error = %e, "chip mismatch");
        settle(device, reference, rejected(ErrorCode::ChipMismatch));
        return;
    }
    if !device.cfg.allow_downgrade
        && let Some(current) = device.state().installed_version
        && is_downgrade(&current, &art.version)
    {
        tracing::warn!(device = %id, reference, installed = %current, offered = %art.version, "downgrade refused");
        settle(device, reference, rejected(ErrorCode::DowngradeRefused));
        return;
    }

    // Flash: never interrupted once started. A newer intent waits for it.
    let Ok(permit) = ctx.flashes.clone().acquire_owned().await else {
        return;
    };
    {
        let mut inner = device.lock();
        if inner.state.wanted.as_deref() != Some(reference) {
            return;
        }
        inner.flashing = true;
    }
    if let Err(e) = device.update(|s| s.flash_started = Some(reference.to_owned())) {
        device.lock().flashing = false;
        tracing::error!(device = %id, code = %e.code(), error = %e, "cannot journal flash start");
        settle(device, reference, failed(e.code()));
        return;
    }
    let Ok(format) = art
        .format
        .to_string()
        .parse::<twinflash_flasher::FirmwareFormat>()
    else {
        device.lock().flashing = false;
        settle(device, reference, rejected(ErrorCode::UnsupportedArtifact));
        return;
    };
    let req = FlashRequest {
        image: fetched.path.clone(),
        format,
        base_address: art.base_address,
        chip: art.chip.clone(),
        reference: reference.to_owned(),
        version: art.version.clone(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let flash_started = Instant::now();
    let flash = device.flasher.flash(&req, tx, CancellationToken::new());
    tokio::pin!(flash);
    let mut throttle = Throttle::default();
    // The stage is reported when it starts, whatever the backend's progress events do.
    throttle.admit(Instant::now(), "flashing", 0);
    progress(device, ctx, "flashing:0".into());
    let result = loop {
        tokio::select! {
            r = &mut flash => break r,
            Some(p) = rx.recv() => {
                if throttle.admit(Instant::now(), "flashing", p.percent) {
                    progress(device, ctx, format!("flashing:{}", p.percent));
                }
            }
        }
    };
    drop(permit);
    device.lock().flashing = false;
    ctx.metrics.observe_flash(
        device.flasher.kind(),
        flash_started.elapsed(),
        result.is_ok(),
    );
    match result {
        Ok(outcome) => {
            tracing::info!(device = %id, reference, version = %art.version, bytes = outcome.bytes, unchanged = outcome.unchanged, "flashed and verified");
            let version = art.version.clone();
            let r = device.update(|s| {
                s.installed = Some(reference.to_owned());
                s.installed_version = Some(version);
                s.flash_started = None;
                s.attempts = 0;
                s.outcome = None;
            });
            if let Err(e) = r {
                tracing::error!(device = %id, code = %e.code(), error = %e, "cannot journal the install");
            }
        }
        Err(e) if is_rejection(e.code()) => {
            // The image cannot go on this device at all (too large, wrong chip, malformed): no attempt will help.
            let code = e.code();
            tracing::warn!(device = %id, reference, %code, error = %e, "image refused by the device");
            let _ = device.update(|s| s.flash_started = None);
            settle(device, reference, rejected(code));
        }
        Err(e) if e.is_transient() => {
            let code = e.code();
            tracing::warn!(device = %id, reference, %code, error = %e, "flash not possible now; will retry");
            let _ = device.update(|s| s.flash_started = None);
            progress(device, ctx, format!("waiting:{code}"));
            backoff(ctx, device, attempt).await;
        }
        Err(e) => {
            let code = e.code();
            tracing::warn!(device = %id, reference, %code, attempt, error = %e, "flash failed");
            let readback = device.flasher.installed().await.ok().flatten();
            let reads_back = device.flasher.reads_back();
            let max = ctx.max_attempts;
            let r = device.update(|s| {
                s.attempts = attempt;
                if reads_back {
                    s.flash_started = None;
                    s.installed = readback.as_ref().map(|i| i.reference.clone());
                    s.installed_version = readback.as_ref().map(|i| i.version.clone());
                }
                if attempt >= max {
                    s.outcome = Some((reference.to_owned(), failed(code)));
                }
            });
            if let Err(e) = r {
                tracing::error!(device = %id, code = %e.code(), error = %e, "cannot journal the failed attempt");
            }
            if attempt < max {
                progress(device, ctx, format!("waiting:{code}"));
                backoff(ctx, device, attempt).await;
            }
        }
    }
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

/// True when `offered` is a lower semver than `installed`. Unparsable versions never count as a downgrade.
pub fn is_downgrade(installed: &str, offered: &str) -> bool {
    match (
        semver::Version::parse(installed),
        semver::Version::parse(offered),
    ) {
        (Ok(i), Ok(o)) => o < i,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downgrade_is_semver_order() {
        assert!(is_downgrade("1.2.0", "1.1.9"));
        assert!(is_downgrade("1.0.0", "1.0.0-rc.1"));
        assert!(!is_downgrade("1.0.0", "1.0.0"));
        assert!(!is_downgrade("1.0.0", "1.0.1"));
        assert!(!is_downgrade("unknown", "0.1.0"));
    }

    #[test]
    fn percent_is_bounded() {
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(50, 200), 25);
        assert_eq!(percent(300, 200), 100);
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
    }
}
