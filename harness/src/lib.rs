//! Dev-only test harness: real mosquitto and docker-registry on free loopback ports, a TCP
//! fault proxy, a minimal in-memory Kubernetes API server ([`kubeapi`]) and emulated microcontroller
//! boards in qemu-system-arm with test firmware built from C ([`board`]). Synchronous handles
//! (std processes, sockets and threads), so they work from plain `#[test]` and `#[tokio::test]`
//! alike; every process dies with its handle or with the test process.
//!
//! ```no_run
//! use twinflash_harness::{Fault, FaultProxy, Mosquitto, Registry};
//!
//! # fn main() -> Result<(), twinflash_harness::HarnessError> {
//! let mut broker = Mosquitto::start()?; // persistence on, free port, temp dir
//! let registry = Registry::start()?; // anonymous, empty storage
//! let proxy = FaultProxy::start(registry.addr())?; // point the client at proxy.addr()
//! proxy.set(Fault::CutAfter { bytes: 4 << 20 }); // every connection cut after 4 MiB
//! broker.restart(true)?; // graceful: sessions and queued QoS 1 messages survive
//! # let _ = (broker.url(), registry.host());
//! # Ok(())
//! # }
//! ```

pub mod board;
mod certs;
mod error;
pub mod http;
pub mod kubeapi;
mod mosquitto;
mod process;
mod proxy;
mod registry;
pub mod scripted;

use std::net::{Ipv4Addr, TcpListener};

pub use board::{Board, BoardKind, Firmware, Variant};
pub use certs::{Certs, make_certs};
pub use error::HarnessError;
pub use kubeapi::FakeApi;
pub use mosquitto::{Mosquitto, MosquittoOptions, TlsFiles};
pub use process::{ServiceProcess, log_tail, status_kib, tcp_accepts, tool_available};
pub use proxy::{Fault, FaultProxy};
pub use registry::{Registry, RegistryOptions, RegistryTls};

/// Whether a test that needs an optional tool (`what`, e.g. "the Python oras package") may run. `available` false:
/// on a developer machine the test prints SKIPPED and should return; in CI (`CI` set) it fails instead, because
/// scripts/test.sh installs every tool and a skipped interop test would prove nothing.
pub fn needs(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is missing in CI: scripts/test.sh installs it"
    );
    eprintln!("SKIPPED: {what} is not installed (scripts/test.sh installs it)");
    false
}

/// A port that was free a moment ago on 127.0.0.1: binds `127.0.0.1:0`, reads the port, drops the
/// socket. Another process may take it before you bind it; the `start` functions retry.
/// Returns 0 (let the OS choose at bind time) if even binding port 0 fails.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn memory_fields_of_a_process_are_read_in_kib() {
        let hwm = status_kib(None, "VmHWM").unwrap();
        let rss = status_kib(Some(std::process::id()), "VmRSS").unwrap();
        assert!(hwm > 0 && rss > 0, "VmHWM {hwm} KiB, VmRSS {rss} KiB");
        assert_eq!(status_kib(None, "VmHW"), None, "a field is matched whole");
        assert_eq!(status_kib(Some(u32::MAX), "VmRSS"), None, "no such process");
    }

    #[test]
    fn handles_can_move_across_threads_and_tasks() {
        assert_send_sync::<Mosquitto>();
        assert_send_sync::<Registry>();
        assert_send_sync::<FaultProxy>();
        assert_send_sync::<FakeApi>();
        assert_send_sync::<Board>();
        assert_send_sync::<HarnessError>();
    }

    #[test]
    fn free_port_is_bindable_on_loopback() {
        let port = free_port();
        assert_ne!(port, 0);
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok());
    }

    #[test]
    fn tool_available_finds_sh_and_not_nonsense() {
        assert!(tool_available("sh"));
        assert!(!tool_available("no-such-tool-twinflash"));
    }
}
