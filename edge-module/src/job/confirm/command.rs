//! The `command` check: an external health check, run without a shell. Exit 0 confirms, exit 3 says the device runs
//! another version, anything else is "not yet".

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

use super::Once;
use crate::plan::Firmware;

/// The most of a check command's output kept for the log.
const OUTPUT_CLIP: usize = 512;

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

/// One run of the command, bounded by `left`.
pub(super) async fn run(
    argv: &[String],
    device: &str,
    firmware: &Firmware,
    left: Duration,
) -> Once {
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
