//! `twinflash rollout`: create, watch, pause, resume and abort staged FirmwareRollouts (twinflash.io/v1alpha1).
//! The planning is twinflash-cloud's; this verb only writes the FirmwareRollout object and reads its status
//! (types from `twinflash-rollout-api`, so the CLI does not link the controller).

mod ops;

use anyhow::Context;
use ops as rc;

/// Staged firmware rollouts over Devices: waves, failure threshold, automatic abort and rollback.
#[derive(Debug, clap::Args)]
pub struct Cmd {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Create a FirmwareRollout from flags (`--dry-run` prints it without a cluster).
    Create(Create),
    /// Show rollouts as a table: phase, wave, progress, and every failed device with its error code.
    Status {
        /// One rollout; all of the namespace when absent.
        name: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hold a rollout: no new device is started (running ones finish).
    Pause(Target),
    /// Let a paused rollout go on.
    Resume(Target),
    /// Stop a rollout; with --rollback every device already changed gets its previous desired value back.
    Abort {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        rollback: bool,
    },
}

#[derive(Debug, clap::Args)]
struct Target {
    /// The rollout.
    name: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Print the patched rollout as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  twinflash rollout create blinky-1-4-2 --selector app=blinky --firmware registry.local:5000/fw/blinky:1.4.2 \\\n      --wave 1 --wave 10% --wave 100% --max-in-flight 20 --max-failure-percent 5 --min-sample 10 --rollback-on-abort"
)]
struct Create {
    /// The rollout's name.
    name: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Which Devices, in kubectl label-selector syntax (`app=blinky,site in (a,b)`).
    #[arg(long)]
    selector: String,
    /// The firmware: a tag (pinned to its digest once, at start) or a digest-pinned reference.
    #[arg(long)]
    firmware: String,
    /// A wave size, absolute (`1`) or a percentage (`10%`), in order; the last wave takes the rest.
    #[arg(long = "wave")]
    waves: Vec<String>,
    /// Devices in progress at once.
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// Abort when more than this percentage of finished devices failed ...
    #[arg(long)]
    max_failure_percent: Option<u32>,
    /// ... once at least this many devices finished.
    #[arg(long, default_value_t = 0)]
    min_sample: u32,
    /// Abort when more than this many devices failed.
    #[arg(long)]
    max_failures: Option<u32>,
    /// A device in progress longer than this (seconds) counts as failed (`timeout`).
    #[arg(long)]
    device_timeout: Option<u64>,
    /// Seconds to wait between waves.
    #[arg(long, default_value_t = 0)]
    pause_between_waves: u64,
    /// Create it paused.
    #[arg(long)]
    paused: bool,
    /// On abort, give every changed device its previous desired value back.
    #[arg(long)]
    rollback_on_abort: bool,
    /// Print the object as YAML instead of creating it.
    #[arg(long)]
    dry_run: bool,
}

/// A client of the cluster that names itself `twinflash/<version>` on every request (issue 22, F3).
async fn client() -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes cluster (KUBECONFIG or in-cluster credentials) [internal]")?;
    kube::Client::try_from(rc::with_user_agent(config))
        .context("cannot build the Kubernetes client [internal]")
}

/// Runs the verb.
pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd.action {
        Action::Create(c) => {
            let defaults = rc::CreateFlags::default();
            let flags = rc::CreateFlags {
                name: c.name,
                namespace: c.namespace,
                selector: c.selector,
                firmware: c.firmware,
                waves: c.waves,
                max_in_flight: c.max_in_flight.unwrap_or(defaults.max_in_flight),
                max_failure_percent: c.max_failure_percent,
                min_sample: c.min_sample,
                max_failures: c.max_failures,
                device_timeout_seconds: c.device_timeout.unwrap_or(defaults.device_timeout_seconds),
                pause_between_waves_seconds: c.pause_between_waves,
                paused: c.paused,
                rollback_on_abort: c.rollback_on_abort,
            };
            let rollout = rc::rollout_from_flags(&flags)
                .map_err(|e| anyhow::anyhow!("{e} [invalid-reference]"))?;
            if c.dry_run {
                out!(
                    "{}",
                    serde_yaml::to_string(&rollout)
                        .context("cannot render the rollout [internal]")?
                );
                return Ok(());
            }
            let created = rc::create(client().await?, &rollout)
                .await
                .context("cannot create the rollout")?;
            outln!("{}", rc::status_table(&[created]));
        }
        Action::Status {
            name,
            namespace,
            json,
        } => {
            let rollouts = rc::fetch(client().await?, &namespace, name.as_deref())
                .await
                .context("cannot read rollouts")?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&rc::status_json(&rollouts))?
                );
            } else {
                outln!("{}", rc::status_table(&rollouts));
            }
        }
        Action::Pause(t) => patch(t, rc::pause_patch(true)).await?,
        Action::Resume(t) => patch(t, rc::pause_patch(false)).await?,
        Action::Abort { target, rollback } => patch(target, rc::abort_patch(rollback)).await?,
    }
    Ok(())
}

async fn patch(t: Target, patch: serde_json::Value) -> anyhow::Result<()> {
    let r = rc::patch_spec(client().await?, &t.namespace, &t.name, &patch)
        .await
        .with_context(|| format!("cannot patch rollout {}/{}", t.namespace, t.name))?;
    if t.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&rc::status_json(std::slice::from_ref(&r)))?
        );
    } else {
        outln!("{}", rc::status_table(&[r]));
    }
    Ok(())
}
