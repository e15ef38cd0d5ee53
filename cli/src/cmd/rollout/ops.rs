//! What the `twinflash rollout` verbs do, apart from clap: a FirmwareRollout from flags, the
//! status as a table or JSON, and the merge patches (and calls) for pause, resume and abort.
//! Nothing here prints.

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use twinflash_rollout_api::{
    FailureThreshold, FirmwareRollout, FirmwareRolloutSpec, Strategy, parse_selector,
};

/// The flags of `twinflash rollout create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateFlags {
    /// Rollout name.
    pub name: String,
    /// Namespace (of the rollout and its Devices).
    pub namespace: String,
    /// Label selector in kubectl syntax: `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub selector: String,
    /// Firmware reference (tag or digest).
    pub firmware: String,
    /// Wave sizes (`1`, `10%`, ...); empty = one wave.
    pub waves: Vec<String>,
    /// maxInFlight.
    pub max_in_flight: u32,
    /// failureThreshold.maxFailurePercent.
    pub max_failure_percent: Option<u32>,
    /// failureThreshold.minSample.
    pub min_sample: u32,
    /// failureThreshold.maxFailures.
    pub max_failures: Option<u32>,
    /// deviceTimeoutSeconds.
    pub device_timeout_seconds: u64,
    /// pauseBetweenWavesSeconds.
    pub pause_between_waves_seconds: u64,
    /// Create paused.
    pub paused: bool,
    /// rollbackOnAbort.
    pub rollback_on_abort: bool,
}

impl Default for CreateFlags {
    fn default() -> Self {
        let s = Strategy::default();
        CreateFlags {
            name: String::new(),
            namespace: "default".into(),
            selector: String::new(),
            firmware: String::new(),
            waves: Vec::new(),
            max_in_flight: s.max_in_flight,
            max_failure_percent: None,
            min_sample: 0,
            max_failures: None,
            device_timeout_seconds: s.device_timeout_seconds,
            pause_between_waves_seconds: 0,
            paused: false,
            rollback_on_abort: false,
        }
    }
}

/// The FirmwareRollout the flags describe, validated as the controller would.
pub fn rollout_from_flags(f: &CreateFlags) -> Result<FirmwareRollout, String> {
    if f.name.is_empty() {
        return Err("a rollout needs a name".into());
    }
    let spec = FirmwareRolloutSpec {
        selector: parse_selector(&f.selector)?,
        firmware: f.firmware.clone(),
        strategy: Strategy {
            waves: if f.waves.is_empty() {
                Strategy::default().waves
            } else {
                f.waves.clone()
            },
            max_in_flight: f.max_in_flight,
            failure_threshold: FailureThreshold {
                max_failure_percent: f.max_failure_percent,
                min_sample: f.min_sample,
                max_failures: f.max_failures,
            },
            device_timeout_seconds: f.device_timeout_seconds,
            pause_between_waves_seconds: f.pause_between_waves_seconds,
        },
        paused: f.paused,
        abort: false,
        rollback_on_abort: f.rollback_on_abort,
    };
    spec.validate()?;
    let mut r = FirmwareRollout::new(&f.name, spec);
    r.metadata.namespace = Some(f.namespace.clone());
    Ok(r)
}

/// `twinflash rollout status` as a table: one line per rollout, then each failed Device with its
/// code.
pub fn status_table(rollouts: &[FirmwareRollout]) -> String {
    let mut rows = vec![
        [
            "NAME",
            "PHASE",
            "WAVE",
            "PROGRESS",
            "PENDING",
            "IN-PROGRESS",
            "INSTALLED",
            "FAILED",
            "SKIPPED",
            "FIRMWARE",
        ]
        .map(str::to_owned),
    ];
    for r in rollouts {
        let s = r.status.clone().unwrap_or_default();
        rows.push([
            r.name_any(),
            s.phase.as_str().to_owned(),
            format!("{}/{}", s.current_wave, s.waves),
            format!("{}/{}", s.installed, s.total),
            s.pending.to_string(),
            s.in_progress.to_string(),
            s.installed.to_string(),
            s.failed.to_string(),
            s.skipped.to_string(),
            if s.pinned.is_empty() {
                r.spec.firmware.clone()
            } else {
                s.pinned.clone()
            },
        ]);
    }
    let widths: Vec<usize> = (0..10)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for r in rollouts {
        let Some(s) = &r.status else { continue };
        if !s.message.is_empty() {
            out.push_str(&format!("{}: {}\n", r.name_any(), s.message));
        }
        for f in &s.failed_devices {
            out.push_str(&format!(
                "{}: device {} failed in wave {}: {}\n",
                r.name_any(),
                f.device,
                f.wave,
                f.code
            ));
        }
    }
    out
}

/// `--json`: the rollouts' names, specs and statuses.
pub fn status_json(rollouts: &[FirmwareRollout]) -> Value {
    Value::Array(
        rollouts
            .iter()
            .map(|r| {
                json!({
                    "namespace": r.namespace(),
                    "name": r.name_any(),
                    "spec": r.spec,
                    "status": r.status.clone().unwrap_or_default(),
                })
            })
            .collect(),
    )
}

/// The merge patch of `pause` (`true`) and `resume` (`false`).
pub fn pause_patch(paused: bool) -> Value {
    json!({"spec": {"paused": paused}})
}

/// The merge patch of `abort` (optionally asking for a rollback).
pub fn abort_patch(rollback: bool) -> Value {
    if rollback {
        json!({"spec": {"abort": true, "rollbackOnAbort": true}})
    } else {
        json!({"spec": {"abort": true}})
    }
}

/// The field manager of the CLI's writes: an operator's `twinflash rollout` changes show as `twinflash` in
/// `managedFields`, apart from the controller's (`twinflash-rollout` writes the status).
pub const FIELD_MANAGER: &str = "twinflash";

/// `config` sending `User-Agent: twinflash/<version>` on every request (a User-Agent already set is replaced).
pub fn with_user_agent(mut config: kube::Config) -> kube::Config {
    let ua = http::HeaderValue::from_static(concat!("twinflash/", env!("CARGO_PKG_VERSION")));
    config
        .headers
        .retain(|(name, _)| name != http::header::USER_AGENT);
    config.headers.push((http::header::USER_AGENT, ua));
    config
}

/// Creates the rollout.
pub async fn create(client: Client, rollout: &FirmwareRollout) -> kube::Result<FirmwareRollout> {
    let ns = rollout.namespace().unwrap_or_else(|| "default".into());
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    Api::<FirmwareRollout>::namespaced(client, &ns)
        .create(&params, rollout)
        .await
}

/// Applies `patch` (from [`pause_patch`] / [`abort_patch`]) to `namespace/name`.
pub async fn patch_spec(
    client: Client,
    namespace: &str,
    name: &str,
    patch: &Value,
) -> kube::Result<FirmwareRollout> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    Api::<FirmwareRollout>::namespaced(client, namespace)
        .patch(name, &params, &Patch::Merge(patch))
        .await
}

/// Every rollout of `namespace` (or one, by name).
pub async fn fetch(
    client: Client,
    namespace: &str,
    name: Option<&str>,
) -> kube::Result<Vec<FirmwareRollout>> {
    let api = Api::<FirmwareRollout>::namespaced(client, namespace);
    match name {
        Some(n) => Ok(vec![api.get(n).await?]),
        None => Ok(api.list(&Default::default()).await?.items),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinflash_rollout_api::{FailedDevice, FirmwareRolloutStatus, Phase};

    #[test]
    fn flags_make_a_valid_rollout_or_one_clear_error() {
        let f = CreateFlags {
            name: "fw-2".into(),
            namespace: "fleet".into(),
            selector: "fleet=blinky".into(),
            firmware: "registry.local:5000/fw/blinky:2.0.0".into(),
            waves: vec!["1".into(), "10%".into(), "100%".into()],
            max_failure_percent: Some(10),
            min_sample: 5,
            rollback_on_abort: true,
            ..CreateFlags::default()
        };
        let r = rollout_from_flags(&f).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["apiVersion"], "twinflash.io/v1alpha1");
        assert_eq!(v["metadata"]["namespace"], "fleet");
        assert_eq!(v["spec"]["strategy"]["waves"], json!(["1", "10%", "100%"]));
        assert_eq!(
            v["spec"]["strategy"]["failureThreshold"]["maxFailurePercent"],
            10
        );
        assert_eq!(v["spec"]["rollbackOnAbort"], true);
        let bad = CreateFlags {
            waves: vec!["0".into()],
            ..f.clone()
        };
        assert!(rollout_from_flags(&bad).unwrap_err().contains("zero"));
        assert!(
            rollout_from_flags(&CreateFlags {
                max_in_flight: 0,
                ..f.clone()
            })
            .is_err()
        );
        assert!(
            rollout_from_flags(&CreateFlags {
                firmware: String::new(),
                ..f
            })
            .is_err()
        );
    }

    #[test]
    fn table_lists_counts_and_each_failed_device_with_its_code() {
        let mut r = rollout_from_flags(&CreateFlags {
            name: "fw-2".into(),
            firmware: "r.local/fw/b:2".into(),
            ..CreateFlags::default()
        })
        .unwrap();
        r.status = Some(FirmwareRolloutStatus {
            phase: Phase::Aborted,
            current_wave: 2,
            waves: 3,
            total: 30,
            installed: 4,
            failed: 2,
            pending: 24,
            failed_devices: vec![
                FailedDevice {
                    device: "dev-07".into(),
                    code: "flash-failed".into(),
                    wave: 2,
                },
                FailedDevice {
                    device: "dev-09".into(),
                    code: "timeout".into(),
                    wave: 2,
                },
            ],
            message: "aborted: 2 failed of 6 finished crosses the failure threshold".into(),
            ..FirmwareRolloutStatus::default()
        });
        let t = status_table(&[r.clone()]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME") && lines[0].contains("PROGRESS"));
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            &cols[..9],
            ["fw-2", "Aborted", "2/3", "4/30", "24", "0", "4", "2", "0"]
        );
        assert!(t.contains("device dev-07 failed in wave 2: flash-failed"));
        assert!(t.contains("device dev-09 failed in wave 2: timeout"));
        let j = status_json(&[r]);
        assert_eq!(j[0]["status"]["failedDevices"][1]["code"], "timeout");
        assert_eq!(pause_patch(true), json!({"spec": {"paused": true}}));
        assert_eq!(abort_patch(true)["spec"]["rollbackOnAbort"], true);
        assert!(abort_patch(false)["spec"].get("rollbackOnAbort").is_none());
    }
}
