//! The confirmation and revert steps (docs/contract.md section 3). After its flash (which ends with the device's
//! reset) a device with a `[devices.confirm]` check reports `confirming` until the check passes within its timeout;
//! only then is the firmware `installed`. When the check fails, the previous firmware is fetched from the cache
//! (pinned there while it is a fallback), flashed back and confirmed in turn, and the intent ends
//! `failed:boot-failed` (or `failed:version-mismatch`) with the twin still naming the previous firmware. Every step is
//! journaled first (`plan::JobState::confirming`, `reverting`): a restart resumes at the step it was in.
//!
//! The kinds of check: `command` (an external health check), `serial` (a boot line on the UART, listened to from
//! before the flash on: [`prepare`]), `memory` (a version string in the running device's memory, through the
//! flasher), `twin` (the device's own report of its version in a twin property, MQTT mode).

mod command;
mod memory;
mod serial;
mod twin;

use std::time::{Duration, Instant};

use mqtt_schema::clip::clip;
use mqtt_schema::{ErrorCode, FirmwareRef, FirmwareState};
use twinflash_artifact::fetch::Fetched;

use super::{JobContext, backoff, durable, flash, progress};
use crate::config::ConfirmKind;
use crate::device::Device;
use crate::plan::{self, Firmware, FlashResult, Verdict};

/// Waits for `firmware` to prove it runs, then journals the verdict. Returns early on shutdown (the journal still
/// says `confirming`; the next start checks again).
/// `prepared` is what [`prepare`] made ready before the flash, None after a restart.
pub(super) async fn confirm(
    device: &Device,
    ctx: &JobContext,
    firmware: &Firmware,
    prepared: Option<Prepared>,
) {
    progress(device, ctx, FirmwareState::Confirming);
    let started = Instant::now();
    let probe = match prepared {
        Some(p) if p.reference == firmware.reference => Some(p.probe),
        _ => resume(device, ctx, firmware).await,
    };
    let replaced = Replaced::Installed(
        device
            .state()
            .confirming
            .and_then(|c| c.fallback)
            .map(|f| f.version),
    );
    let verdict = match probe {
        Some(probe) => check(device, ctx, firmware, probe, &replaced).await,
        None if device.cfg.confirm.is_none() => Some(Ok(())),
        None => None,
    };
    let Some(verdict) = verdict else {
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
    let located = precheck(device, &fetched).await;
    let prepared = prepare(device, located, &to.reference).await;
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
    match prepared {
        Some(p) => check(device, ctx, to, p.probe, &Replaced::Failed).await,
        None => Some(Ok(())),
    }
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
#[derive(Debug)]
enum Once {
    /// The device runs the firmware.
    Confirmed,
    /// The device runs another version.
    OtherVersion(String),
    /// Not (yet): why.
    NotYet(String),
}

/// A check made ready before its flash (see [`prepare`]), for one reference.
#[derive(Debug)]
pub(super) struct Prepared {
    reference: String,
    probe: Probe,
}

/// What a check observes the device with, by kind.
#[derive(Debug)]
enum Probe {
    /// `command`: the command, run anew each time.
    Command,
    /// `serial`: the UART, listened to since before the flash (or why the settings are unusable).
    Serial(Result<serial::Serial, String>),
    /// `memory`: the address of the version string (or why it is unknown).
    Memory(Result<u64, String>),
    /// `twin`: edgecore's stored twin, asked for anew each time.
    Twin,
}

/// Where the device's check will read, decided before anything is flashed: for a memory check, the address of the
/// version string (its `address`, or its `symbol` looked up in the ELF artifact `fetched`); None for the other kinds.
/// Err: the check can never judge this artifact, and flashing it would only lead to a revert.
pub(super) async fn precheck(device: &Device, fetched: &Fetched) -> Result<Option<u64>, String> {
    match device.cfg.confirm.as_ref() {
        Some(cfg) if cfg.kind == ConfirmKind::Memory => {
            memory::locate(cfg, &fetched.path, fetched.artifact.format)
                .await
                .map(Some)
        }
        _ => Ok(None),
    }
}

/// Makes the device's check ready before the firmware `reference` is flashed: a serial check starts listening (the
/// banner follows the reset that ends the flash), a memory check takes the address [`precheck`] found (`located`).
/// None without a check.
pub(super) async fn prepare(
    device: &Device,
    located: Result<Option<u64>, String>,
    reference: &str,
) -> Option<Prepared> {
    let cfg = device.cfg.confirm.as_ref()?;
    let probe = match cfg.kind {
        ConfirmKind::Command => Probe::Command,
        ConfirmKind::Twin => Probe::Twin,
        ConfirmKind::Serial => {
            let mut check = serial::Serial::new(cfg, None);
            if let Ok(c) = &mut check
                && let Err(e) = c.listen().await
            {
                tracing::warn!(device = device.id(), error = %e, "cannot listen to the UART before the flash; the check opens it again and resets the device");
            }
            Probe::Serial(check)
        }
        ConfirmKind::Memory => {
            let at = located
                .and_then(|a| a.ok_or_else(|| "no address for the version string".to_owned()));
            if let Err(e) = &at {
                tracing::warn!(device = device.id(), reference, error = %e, "the memory check has no address for this firmware: it cannot confirm");
            }
            Probe::Memory(at)
        }
    };
    Some(Prepared {
        reference: reference.to_owned(),
        probe,
    })
}

/// The probe for `firmware` when nothing was prepared before its flash: after an agent restart in `confirming`. A
/// serial check listens, then resets the device (its banner will not come by itself); a memory check looks its
/// symbol up in the cached artifact. None on shutdown or without a check.
async fn resume(device: &Device, ctx: &JobContext, firmware: &Firmware) -> Option<Probe> {
    let cfg = device.cfg.confirm.as_ref()?;
    match cfg.kind {
        ConfirmKind::Command => Some(Probe::Command),
        ConfirmKind::Twin => Some(Probe::Twin),
        ConfirmKind::Serial => {
            let mut check = serial::Serial::new(cfg, None);
            if let Ok(c) = &mut check {
                match c.listen().await {
                    Ok(()) => match device.flasher.reset().await {
                        Ok(()) => tracing::info!(
                            device = device.id(),
                            "device reset to see its boot line again"
                        ),
                        Err(e) => {
                            tracing::warn!(device = device.id(), code = %e.code(), error = %e, "cannot reset the device; listening for a boot line without")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(device = device.id(), error = %e, "cannot listen to the UART")
                    }
                }
            }
            Some(Probe::Serial(check))
        }
        ConfirmKind::Memory => {
            if let Some(address) = cfg.address {
                return Some(Probe::Memory(Ok(address)));
            }
            let Ok(reference) = FirmwareRef::parse(&firmware.reference) else {
                return Some(Probe::Memory(Err("not a firmware reference".into())));
            };
            let cancel = ctx.shutdown.child_token();
            match ctx.fetcher.fetch(&reference, |_| {}, &cancel).await {
                Ok(fetched) => Some(Probe::Memory(
                    memory::locate(cfg, &fetched.path, fetched.artifact.format).await,
                )),
                Err(_) if cancel.is_cancelled() => None,
                Err(e) => Some(Probe::Memory(Err(format!(
                    "the artifact to look the symbol up in: {e} ({})",
                    e.code()
                )))),
            }
        }
    }
}

/// What the flash before a check replaced, and so what the device may still show without proving anything.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Replaced {
    /// An install replaced this version (None: nothing known).
    Installed(Option<String>),
    /// A revert replaced the firmware that failed, which may show anything.
    Failed,
}

impl Replaced {
    /// Which early UART lines count.
    fn early(&self) -> serial::Early {
        match self {
            Replaced::Installed(Some(v)) => serial::Early::AllBut(v.clone()),
            Replaced::Installed(None) | Replaced::Failed => serial::Early::OnlyConfirming,
        }
    }

    /// The version that is "not yet" when the device's memory still shows it.
    fn version(&self) -> Option<&str> {
        match self {
            Replaced::Installed(v) => v.as_deref(),
            Replaced::Failed => None,
        }
    }
}

/// Runs the device's check until it passes, says another version runs, or its timeout passes (`boot-failed`).
/// None on shutdown. A device without a check (its config changed since the journal said `confirming`) passes.
async fn check(
    device: &Device,
    ctx: &JobContext,
    firmware: &Firmware,
    mut probe: Probe,
    replaced: &Replaced,
) -> Option<Result<(), ErrorCode>> {
    let Some(cfg) = &device.cfg.confirm else {
        return Some(Ok(()));
    };
    let began = Instant::now();
    let deadline = began + Duration::from_secs(cfg.timeout_secs);
    let interval = Duration::from_millis(cfg.interval_ms);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let once = tokio::select! {
            once = run_once(&mut probe, device, ctx, firmware, replaced, began, left) => once,
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
async fn run_once(
    probe: &mut Probe,
    device: &Device,
    ctx: &JobContext,
    firmware: &Firmware,
    replaced: &Replaced,
    began: Instant,
    left: Duration,
) -> Once {
    let Some(cfg) = &device.cfg.confirm else {
        return Once::Confirmed;
    };
    match probe {
        Probe::Command => command::run(&cfg.argv, device.id(), firmware, left).await,
        Probe::Serial(Ok(check)) => {
            check
                .run(&firmware.version, &replaced.early(), began, left)
                .await
        }
        Probe::Memory(Ok(address)) => {
            memory::run(
                device.flasher.as_ref(),
                *address,
                cfg.length(),
                &firmware.version,
                replaced.version(),
                left,
            )
            .await
        }
        Probe::Twin => {
            let property = cfg.property.as_deref().unwrap_or_default();
            twin::run(device, &ctx.reports, property, &firmware.version, left).await
        }
        Probe::Serial(Err(why)) | Probe::Memory(Err(why)) => Once::NotYet(why.clone()),
    }
}
