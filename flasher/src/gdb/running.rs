//! What the gdb backend does to a running target besides flashing it: reset it (its configured `reset` monitor
//! command) and read its memory (`m`). Each opens its own session, and detaches at the end so that the target runs
//! on: QEMU's GDB server (and OpenOCD's, pyOCD's) halts the target while a client is attached.

use super::{GdbFlasher, detach, refused};
use crate::{FlashError, MAX_MEMORY_READ};

impl GdbFlasher {
    /// `monitor <reset>`, then detach. Without a configured `reset` the backend cannot reset the target.
    pub(super) async fn run_reset(&self) -> Result<(), FlashError> {
        let Some(cmd) = &self.cfg.reset else {
            return Err(FlashError::Unsupported {
                backend: "gdb",
                operation: "reset the device (it has no `reset` monitor command configured)",
            });
        };
        let _guard = self.lock.lock().await;
        let (mut client, _) = self.open().await?;
        let reply = client.monitor(cmd).await;
        detach(&mut client, &self.cfg.target).await;
        let reply = reply?;
        if reply != b"OK" {
            return Err(refused(&self.cfg.target, &format!("monitor {cmd}"), &reply));
        }
        tracing::info!(target = %self.cfg.target, reset = %cmd, "target reset");
        Ok(())
    }

    /// `m` reads of `len` bytes (at most [`MAX_MEMORY_READ`]) from `address`, then detach. A read the server
    /// refuses is `flash-failed`.
    pub(super) async fn run_read_memory(
        &self,
        address: u64,
        len: u64,
    ) -> Result<Vec<u8>, FlashError> {
        if len > MAX_MEMORY_READ || address.checked_add(len).is_none() {
            return Err(FlashError::Config {
                detail: format!(
                    "a memory read of {len} bytes at {address:#x} (at most {MAX_MEMORY_READ} bytes, below 2^64)"
                ),
            });
        }
        let _guard = self.lock.lock().await;
        let (mut client, features) = self.open().await?;
        let read = read(
            &mut client,
            &self.cfg.target,
            features.packet_size,
            address,
            len,
        )
        .await;
        detach(&mut client, &self.cfg.target).await;
        read
    }
}

/// Reads `len` bytes from `address` in `m` packets that fit the server's packet size.
async fn read(
    client: &mut super::Client,
    target: &str,
    packet_size: usize,
    address: u64,
    len: u64,
) -> Result<Vec<u8>, FlashError> {
    let chunk = u64::try_from((packet_size / 2).saturating_sub(8).max(8)).unwrap_or(8);
    let mut out = Vec::new();
    while (out.len() as u64) < len {
        let addr = address + out.len() as u64;
        let n = (len - out.len() as u64).min(chunk);
        let cmd = format!("m{addr:x},{n:x}");
        let reply = client.request(cmd.as_bytes()).await?;
        match hex::decode(&reply) {
            Ok(got) if !got.is_empty() && got.len() as u64 <= n => out.extend(got),
            _ => return Err(refused(target, &cmd, &reply)),
        }
    }
    Ok(out)
}
