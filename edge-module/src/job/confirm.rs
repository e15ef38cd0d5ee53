//! The confirmation and revert steps (docs/contract.md section 3). After its flash (which ends with the device's
//! reset) a device with a `[devices.confirm]` check reports `confirming` until the check passes within its timeout;
//! only then is the firmware `installed`. When the check fails, the previous firmware is fetched from the cache
//! (pinned there while it is a fallback), flashed back and confirmed in turn, and the intent ends
//! `failed:boot-failed` (or `failed:version-mismatch`) with the twin still naming the previous firmware. Every step is
//! journaled first (`plan::JobState::confirming`, `reverting`): a restart resumes at the step it was in.

use std::process::Stdio;
use std::time::{Duration, Instant};

use mqtt_schema::clip::clip;
use mqtt_schema::{ErrorCode, FirmwareRef, FirmwareState};
use tokio::io::AsyncReadExt as _;

use super::{JobContext, backoff, durable, flash, progress};
use crate::config::{ConfirmConfig, ConfirmKind};
use crate::device::Device;
use crate::plan::{self, Firmware, FlashResult, Verdict};

/// The most of a check command's output kept for the log.
const OUTPUT_CLIP: usize = 512;

/// Waits for `firmware` to prove it runs, then journals the verdict. Returns early on shutdown (the journal still
/// says `confirming`; the next start checks again).
pub(super) async fn confirm(device: &Device, ctx: &JobContext, firmware: &Firmware) {
    progress(device, ctx, FirmwareState::Confirming);
    let started = Instant::now();
    let Some(verdict) = check(device, ctx, firmware).await else {
        return;
    };
    let took = started.elapsed();
    match verdict {
        Ok(()) => {
            tracing::info!(device = device.id(), reference = %firmware.reference, version = %firmware.version, secs = took.as_secs_f32(), "firmware confirmed: the device runs it");
            ctx.metrics.observe_confirm("confirmed", took);
        }
        Err(code) => {
            tracing::warn!(device = device.id(), reference = %firmware.reference, version = %firmware.version, %code, secs = took.as_secs_f32(), "firmware did not confirm");
            ctx.metrics.observe_confirm(code.as_str(), took);
        }
    }
    durable(device, ctx, |s| plan::after_confirm(s, verdict)).await;
}

/// Puts `to` back after `failed` did not confirm (`code`), then journals how that ended. Returns early on shutdown
/// and after a transient error (reported `waiting:<code>`, after a backoff): the journal still says `reverting`.
pub(super) async fn revert(
    device: &Device,
    ctx: &JobContext,
    to: &Firmware,
    failed: &str,
    code: ErrorCode,
) {
    tracing::warn!(device = device.id(), failed = %clip(failed), %code, to = %to.reference, version = %to.version, "putting the previous firmware back");
    let started = Instant::now();
    let Some(result) = put_back(device, ctx, to).await else {
        return;
    };
    let took = started.elapsed();
    match result {
        Ok(()) => {
            tracing::warn!(device = device.id(), reference = %to.reference, version = %to.version, secs = took.as_secs_f32(), "previous firmware back and confirmed");
            ctx.metrics.observe_revert("reverted", took);
        }
        Err(e) => {
            tracing::error!(device = device.id(), reference = %to.reference, code = %e, "revert failed: the device runs an unknown image; it takes no new intent until its desired value changes");
            ctx.metrics
                .observe_revert(ErrorCode::RevertFailed.as_str(), took);
        }
    }
    durable(device, ctx, |s| plan::after_revert(s, result)).await;
}

/// Fetch (normally from the cache), flash and confirm `to`. None: shutdown, or a transient error waited out.
async fn put_back(
    device: &Device,
    ctx: &JobContext,
    to: &Firmware,
) -> Option<Result<(), ErrorCode>> {
    let Ok(firmware) = FirmwareRef::parse(&to.reference) else {
        return Some(Err(ErrorCode::InvalidReference));
    };
    let _ = ctx.fetcher.pin(&to.reference);
    let cancel = ctx.shutdown.child_token();
    let fetched = match ctx.fetcher.fetch(&firmware, |_| {}, &cancel).await {
        Ok(f) => f,
        Err(_) if cancel.is_cancelled() => return None,
        Err(e) => {
            let code = e.code();
            if plan::verdict(code, false) == Verdict::Retry {
                tracing::warn!(device = device.id(), %code, error = %e, "previous firmware not fetched yet; retrying");
                return wait_out(device, ctx, code).await;
            }
            tracing::error!(device = device.id(), %code, error = %e, "previous firmware cannot be fetched");
            return Some(Err(code));
        }
    };
    let permit = ctx.flashes.clone().acquire_owned().await.ok()?;
    device.lock().flashing = true;
    let result = flash(device, ctx, &fetched, &to.reference).await;
    drop(permit);
    device.lock().flashing = false;
    match result {
        FlashResult::Verified { .. } => {}
        FlashResult::Error {
            code,
            verdict: Verdict::Retry,
            ..
        } => return wait_out(device, ctx, code).await,
        FlashResult::Error { code, .. } => return Some(Err(code)),
    }
    // The previous firmware proves it runs too.
    progress(device, ctx, FirmwareState::Confirming);
    check(device, ctx, to).await
}

/// A transient error of the revert: reported `waiting:<code>`, then a backoff; the journal still says `reverting`,
/// so the job tries again. Always None (the revert has no result yet).
async fn wait_out(
    device: &Device,
    ctx: &JobContext,
    code: ErrorCode,
) -> Option<Result<(), ErrorCode>> {
    progress(device, ctx, FirmwareState::Waiting(code.into()));
    backoff(ctx, device, 1).await;
    None
}

/// How one run of a check ended.
enum Once {
    /// The device runs the firmware.
    Confirmed,
    /// The device runs another version.
    OtherVersion(String),
    /// Not (yet): why.
    NotYet(String),
}

/// Runs the device's check until it passes, says another version runs, or its timeout passes (`boot-failed`).
/// None on shutdown. A device without a check (its config changed since the journal said `confirming`) passes.
async fn check(
    device: &Device,
    ctx: &JobContext,
    firmware: &Firmware,
) -> Option<Result<(), ErrorCode>> {
    let Some(cfg) = &device.cfg.confirm else {
        return Some(Ok(()));
    };
    let deadline = Instant::now() + Duration::from_secs(cfg.timeout_secs);
    let interval = Duration::from_millis(cfg.interval_ms);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let once = tokio::select! {
            once = run_once(cfg, device.id(), firmware, left) => once,
            () = ctx.shutdown.cancelled() => return None,
        };
        match once {
            Once::Confirmed => return Some(Ok(())),
            Once::OtherVersion(detail) => {
                tracing::warn!(device = device.id(), expected = %firmware.version, %detail, "the device runs another version than the artifact claims");
                return Some(Err(ErrorCode::VersionMismatch));
            }
            Once::NotYet(why) => {
                if Instant::now() + interval >= deadline {
                    tracing::warn!(device = device.id(), timeout_secs = cfg.timeout_secs, last = %why, "no confirmation within the timeout");
                    return Some(Err(ErrorCode::BootFailed));
                }
                tracing::debug!(device = device.id(), %why, "not confirmed yet");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = ctx.shutdown.cancelled() => return None,
        }
    }
}

/// One run of the check, bounded by `left`.
async fn run_once(cfg: &ConfirmConfig, device: &str, firmware: &Firmware, left: Duration) -> Once {
    match cfg.kind {
        ConfirmKind::Command => run_command(&cfg.argv, device, firmware, left).await,
    }
}

/// `argv` with its placeholders replaced.
fn expand(argv: &[String], device: &str, firmware: &Firmware) -> Vec<String> {
    argv.iter()
        .map(|a| {
            a.replace("{version}", &firmware.version)
                .replace("{reference}", &firmware.reference)
                .replace("{device}", device)
        })
        .collect()
}

async fn run_command(argv: &[String], device: &str, firmware: &Firmware, left: Duration) -> Once {
    let argv = expand(argv, device, firmware);
    let Some((program, args)) = argv.split_first() else {
        return Once::NotYet("no command".into());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Once::NotYet(format!("cannot run {program}: {e}")),
    };
    // The output is read for the log, bounded: a check that writes without end is cut off.
    let mut out = Vec::new();
    let stdout = child.stdout.take();
    let ran = tokio::time::timeout(left, async {
        if let Some(s) = stdout {
            let _ = s.take(OUTPUT_CLIP as u64).read_to_end(&mut out).await;
        }
        child.wait().await
    })
    .await;
    let said = String::from_utf8_lossy(&out).trim().to_owned();
    match ran {
        Err(_) => Once::NotYet(format!("{program} did not end in time")),
        Ok(Err(e)) => Once::NotYet(format!("{program}: {e}")),
        Ok(Ok(status)) if status.success() => Once::Confirmed,
        Ok(Ok(status)) if status.code() == Some(3) => Once::OtherVersion(said),
        Ok(Ok(status)) => Once::NotYet(format!("{program} exited with {status}: {said}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_in_every_argument() {
        let fw = Firmware {
            reference: "r@sha256:1".into(),
            version: "2.0.0".into(),
        };
        let argv = [
            "check",
            "--want={version}",
            "{device}",
            "{reference}",
            "plain",
        ]
        .map(String::from);
        assert_eq!(
            expand(&argv, "ns/d", &fw),
            ["check", "--want=2.0.0", "ns/d", "r@sha256:1", "plain"]
        );
    }
}
