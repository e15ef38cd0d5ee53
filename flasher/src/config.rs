//! The `[devices.flasher]` table of the edge config: `kind = "probe-rs" | "command" | "gdb" | "simulated"`
//! plus the backend's keys (snake_case, unknown keys rejected).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::simulated::Faults;

/// One device's flasher configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FlasherConfig {
    /// A debug probe driven by probe-rs.
    ProbeRs(ProbeRsConfig),
    /// An external flashing tool.
    Command(CommandConfig),
    /// Any GDB server (QEMU, OpenOCD, pyOCD, J-Link GDB server, Black Magic Probe), over the GDB remote protocol.
    Gdb(GdbConfig),
    /// The simulated microcontroller flash.
    Simulated(SimulatedConfig),
}

impl FlasherConfig {
    /// The backend's `kind`, as the configuration names it.
    pub fn kind(&self) -> &'static str {
        match self {
            FlasherConfig::ProbeRs(_) => "probe-rs",
            FlasherConfig::Command(_) => "command",
            FlasherConfig::Gdb(_) => "gdb",
            FlasherConfig::Simulated(_) => "simulated",
        }
    }

    /// The backend in a few words for a config summary: its kind, and for `gdb` the server and the reset.
    pub fn describe(&self) -> String {
        match self {
            FlasherConfig::Gdb(g) => format!(
                "gdb {}, reset: {}",
                g.target,
                g.reset
                    .as_deref()
                    .map_or("none (detach only)".into(), |r| format!("monitor {r}"))
            ),
            other => other.kind().to_owned(),
        }
    }
}

/// `kind = "probe-rs"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeRsConfig {
    /// `VID:PID[:serial]` in hex (e.g. `1366:1015:000683xxxxxx`); absent: the only connected probe.
    #[serde(default)]
    pub probe: Option<String>,
    /// SWD/JTAG clock in kHz; absent: the probe's default.
    #[serde(default)]
    pub speed_khz: Option<u32>,
    /// Hold reset while attaching (needed when the firmware disables the debug port or sleeps).
    #[serde(default)]
    pub connect_under_reset: bool,
    /// `swd` or `jtag`; absent: the probe's default.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Read the flash first and skip a flash whose content already matches.
    #[serde(default = "yes")]
    pub preverify: bool,
    /// Reset and run the target after a verified flash.
    #[serde(default = "yes")]
    pub reset_after: bool,
}

/// `kind = "command"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// argv template, e.g. `["esptool.py", "--chip", "{chip}", "write_flash", "{base_address}", "{file}"]`.
    /// Placeholders: `{file}`, `{chip}`, `{base_address}` (0x-hex), `{format}`. No shell is involved.
    pub flash: Vec<String>,
    /// Optional verify command with the same placeholders; exit 0 means verified.
    #[serde(default)]
    pub verify: Option<Vec<String>>,
    /// Limit for each command in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Working directory of the commands; absent: the agent's.
    #[serde(default)]
    pub workdir: Option<PathBuf>,
}

/// `kind = "gdb"`: flash through a GDB server with the GDB remote serial protocol (ADR 0006).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GdbConfig {
    /// The server: `host:port` (QEMU `-gdb tcp::1234`, OpenOCD `:3333`, pyOCD `:3333`, J-Link `:2331`), or the
    /// path of a serial device (a Black Magic Probe's GDB port, e.g. `/dev/ttyACM0`).
    pub target: String,
    /// Monitor commands (`qRcmd`) sent after connecting, before anything is written: a Black Magic Probe needs
    /// `swdp_scan` (or `jtag_scan`) to find its target; OpenOCD `reset halt` for a target that does not halt on attach.
    #[serde(default)]
    pub init: Vec<String>,
    /// Attach to this target number (`vAttach`) after `init`: `1` for a Black Magic Probe. Absent: the server's
    /// current target (QEMU, OpenOCD, pyOCD and J-Link attach on connect).
    #[serde(default)]
    pub attach: Option<u32>,
    /// The monitor command (`qRcmd`) that resets the target after a verified flash: `system_reset` for QEMU,
    /// `reset` for OpenOCD, pyOCD and J-Link. Absent: no reset; the target runs on from where it stopped when the
    /// backend detaches, and [`crate::Flasher::reset`] is unsupported.
    #[serde(default)]
    pub reset: Option<String>,
    /// Limit for connecting to the server, in seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Limit for each reply of the server (an erase of a large flash may take long), in seconds.
    #[serde(default = "default_reply_timeout")]
    pub reply_timeout_secs: u64,
}

impl GdbConfig {
    /// A configuration with defaults for everything but the target.
    pub fn new(target: impl Into<String>) -> Self {
        GdbConfig {
            target: target.into(),
            init: Vec::new(),
            attach: None,
            reset: None,
            connect_timeout_secs: default_connect_timeout(),
            reply_timeout_secs: default_reply_timeout(),
        }
    }
}

/// `kind = "simulated"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedConfig {
    /// Directory holding `flash.bin`, `installed.json`, `counters.json` and an optional `faults.json`.
    pub dir: PathBuf,
    /// Flash size in bytes (both slots together in A/B mode).
    pub size: u64,
    /// Address of the first flash byte.
    #[serde(default)]
    pub origin: u64,
    /// Erase granularity in bytes.
    #[serde(default = "default_sector")]
    pub sector_size: u64,
    /// Programming granularity in bytes.
    #[serde(default = "default_page")]
    pub page_size: u64,
    /// Programming speed; absent: as fast as the disk.
    #[serde(default)]
    pub write_bytes_per_sec: Option<u64>,
    /// MCUboot-like A/B mode: slot A at `origin`, slot B at `origin + size/2`.
    #[serde(default)]
    pub ab: bool,
    /// Faults armed from the configuration.
    #[serde(default)]
    pub faults: Faults,
}

impl SimulatedConfig {
    /// A configuration with defaults for everything but `dir` and `size`.
    pub fn new(dir: impl Into<PathBuf>, size: u64) -> Self {
        SimulatedConfig {
            dir: dir.into(),
            size,
            origin: 0,
            sector_size: default_sector(),
            page_size: default_page(),
            write_bytes_per_sec: None,
            ab: false,
            faults: Faults::default(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_timeout() -> u64 {
    600
}

fn default_connect_timeout() -> u64 {
    10
}

fn default_reply_timeout() -> u64 {
    60
}

fn default_sector() -> u64 {
    4096
}

fn default_page() -> u64 {
    256
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_from_toml() {
        let sim: FlasherConfig = toml::from_str(
            r#"kind = "simulated"
dir = "/tmp/x"
size = 65536
origin = 0x08000000
ab = true
faults = { power_cut_at_byte = 100 }
"#,
        )
        .unwrap();
        let FlasherConfig::Simulated(s) = sim else {
            panic!("not simulated")
        };
        assert_eq!(
            (s.size, s.origin, s.sector_size, s.page_size, s.ab),
            (65536, 0x0800_0000, 4096, 256, true)
        );
        assert_eq!(s.faults.power_cut_at_byte, Some(100));

        let cmd: FlasherConfig = toml::from_str(
            "kind = \"command\"\nflash = [\"dfu-util\", \"-D\", \"{file}\"]\ntimeout_secs = 5\n",
        )
        .unwrap();
        assert!(matches!(
            cmd,
            FlasherConfig::Command(CommandConfig {
                timeout_secs: 5,
                ..
            })
        ));

        let pr: FlasherConfig =
            toml::from_str("kind = \"probe-rs\"\nprobe = \"1366:1015\"\nspeed_khz = 4000\n")
                .unwrap();
        let FlasherConfig::ProbeRs(p) = pr else {
            panic!("not probe-rs")
        };
        assert!(p.preverify && p.reset_after && !p.connect_under_reset);

        let gdb: FlasherConfig =
            toml::from_str("kind = \"gdb\"\ntarget = \"127.0.0.1:3333\"\nreset = \"reset\"\n")
                .unwrap();
        assert_eq!(gdb.kind(), "gdb");
        assert_eq!(gdb.describe(), "gdb 127.0.0.1:3333, reset: monitor reset");
        let FlasherConfig::Gdb(g) = gdb else {
            panic!("not gdb")
        };
        assert_eq!(
            (
                g.target.as_str(),
                g.reset.as_deref(),
                g.connect_timeout_secs,
                g.reply_timeout_secs
            ),
            ("127.0.0.1:3333", Some("reset"), 10, 60)
        );
    }

    #[test]
    fn unknown_keys_and_kinds_are_rejected() {
        assert!(
            toml::from_str::<FlasherConfig>(
                "kind = \"simulated\"\ndir = \"/x\"\nsize = 1\nsise = 2\n"
            )
            .is_err()
        );
        assert!(toml::from_str::<FlasherConfig>("kind = \"jlink\"\n").is_err());
        assert!(toml::from_str::<FlasherConfig>("kind = \"command\"\n").is_err());
        assert!(toml::from_str::<FlasherConfig>("kind = \"gdb\"\n").is_err());
        assert!(
            toml::from_str::<FlasherConfig>(
                "kind = \"gdb\"\ntarget = \"h:1\"\nreset_after = true\n"
            )
            .is_err()
        );
    }
}
