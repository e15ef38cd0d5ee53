//! The flash step of a job: a permit, the journaled start, the backend run (never interrupted once started; a newer
//! intent waits for it) and what the device holds after a failure.

use std::time::Instant;

use mqtt_schema::FirmwareState;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use twinflash_artifact::fetch::Fetched;
use twinflash_flasher::{FlashRequest, Progress};

use super::{JobContext, durable, progress};
use crate::device::Device;
use crate::plan::{self, FlashResult, ReadBack, Verdict};
use crate::report::progress::Throttle;

/// Takes a flash permit and journals the start of the flash. None when the intent changed meanwhile.
pub(super) async fn start_flash(
    device: &Device,
    ctx: &JobContext,
    reference: &str,
) -> Option<OwnedSemaphorePermit> {
    let permit = ctx.flashes.clone().acquire_owned().await.ok()?;
    {
        let mut inner = device.lock();
        // A removed device starts no flash (one already running finishes).
        if inner.state.wanted.as_deref() != Some(reference) || device.is_retired() {
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
pub(super) async fn flash(
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
    let mut throttle = Throttle::new(ctx.progress_interval);
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
            tracing::info!(device = device.id(), reference = %req.reference, version = %art.version, bytes = outcome.bytes, unchanged = outcome.unchanged, signature = fetched.signature.as_ref().map(tracing::field::display), "flashed and verified");
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
