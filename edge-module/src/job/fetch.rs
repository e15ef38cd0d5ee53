//! The fetch step of a job: the artifact from the registry (or a mirror, or the cache), resumable and verified.
//! Cancelled by a newer intent or by shutdown (the partial stays and is resumed later). The fetcher applies the
//! signature policy before the layer: `unsigned` and `signature-invalid` are rejections like any other, settled
//! here and never retried until the intent changes.

use std::time::Instant;

use mqtt_schema::{FirmwareRef, FirmwareState};
use twinflash_artifact::FetchError;
use twinflash_artifact::fetch::{FetchEvent, Fetched};

use super::{JobContext, backoff, progress, settle};
use crate::device::Device;
use crate::metrics::SignatureCheck;
use crate::plan::{self, Outcome, Verdict};
use crate::report::progress::Throttle;

/// Fetches and verifies the artifact. None when the fetch was cancelled (a newer intent, shutdown) or failed; a
/// failure is settled or waited out here.
pub(super) async fn fetch(
    device: &Device,
    ctx: &JobContext,
    firmware: &FirmwareRef,
    attempt: u32,
) -> Option<Fetched> {
    let reference = firmware.as_str();
    let cancel = ctx.shutdown.child_token();
    {
        let mut inner = device.lock();
        if inner.state.wanted.as_deref() != Some(reference) || device.is_retired() {
            return None;
        }
        inner.download_cancel = Some(cancel.clone());
    }
    let permit = tokio::select! {
        p = ctx.downloads.clone().acquire_owned() => p,
        () = cancel.cancelled() => return None,
    };
    let mut throttle = Throttle::new(ctx.progress_interval);
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
            tracing::info!(device = device.id(), reference, bytes = f.bytes_received, secs = started.elapsed().as_secs_f32(), source = %f.source, signature = f.signature.as_ref().map(tracing::field::display), "fetched and verified");
            if f.signature.is_some() {
                ctx.metrics.signature_check(SignatureCheck::Verified);
            }
            if let Some(warning) = &f.signature_warning {
                ctx.metrics.signature_check(SignatureCheck::Warned);
                tracing::warn!(device = device.id(), reference, %warning, "signatures = warn: installing an artifact without a good signature");
            }
            Some(f)
        }
        Err(_) if cancel.is_cancelled() => None,
        Err(e) => {
            let code = e.code();
            match e {
                FetchError::Unsigned { .. } => {
                    ctx.metrics.signature_check(SignatureCheck::Unsigned)
                }
                FetchError::SignatureInvalid { .. } => {
                    ctx.metrics.signature_check(SignatureCheck::Invalid)
                }
                _ => {}
            }
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
