//! The pipeline behind the network: a writer thread appends each chunk to the partial, then hands
//! it to a hasher thread that hashes it and starts checkpoints (bounded queues). The hasher sees only
//! written bytes, so a checkpoint (fsync, then offset + hash state) never names unwritten ones.

use std::io::Write;
use std::sync::mpsc as std_mpsc;

use bytes::Bytes;

use crate::error::FetchError;
use crate::fetch::resume::Partial;

/// Chunks queued between the network and the writer, and between the writer and the hasher
/// (hyper yields up to ~400 KiB a chunk; short queues keep the peak RSS low: the agent's goal is
/// 40 MiB during a 512 MiB fetch, `twinflash pull`'s 32 MiB).
const QUEUE: usize = 2;

/// The running pipeline. Send chunks with [`Sink::tx`]; [`Sink::stop`] gives the partial back.
pub(crate) struct Sink {
    pub tx: tokio::sync::mpsc::Sender<Bytes>,
    done: tokio::sync::oneshot::Receiver<(Partial, Option<FetchError>)>,
}

impl Sink {
    /// Starts the writer and hasher threads for `p`, checkpointing every `checkpoint_every` bytes.
    pub fn spawn(mut p: Partial, checkpoint_every: u64) -> Result<Self, FetchError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
        let (written_tx, written_rx) = std_mpsc::sync_channel::<Bytes>(QUEUE);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let mut file = p.writer()?;
        let path = p.path();
        let spawn_err = |e| FetchError::Config(format!("cannot start a download thread: {e}"));
        let writer = std::thread::Builder::new()
            .name("twinflash-write".to_owned())
            .spawn(move || {
                let mut error = None;
                while let Some(chunk) = rx.blocking_recv() {
                    if error.is_some() {
                        continue; // drain, so the network side never blocks on a dead writer
                    }
                    match file.write_all(&chunk) {
                        Ok(()) => {
                            if written_tx.send(chunk).is_err() {
                                error = Some(FetchError::Config("the hash thread died".to_owned()));
                            }
                        }
                        Err(e) => error = Some(FetchError::io("write partial", &path, e)),
                    }
                }
                error
            })
            .map_err(spawn_err)?;
        std::thread::Builder::new()
            .name("twinflash-hash".to_owned())
            .spawn(move || {
                let mut error = None;
                let mut since_checkpoint = 0u64;
                for chunk in written_rx {
                    if error.is_some() {
                        continue;
                    }
                    p.advance(&chunk);
                    since_checkpoint += chunk.len() as u64;
                    if since_checkpoint >= checkpoint_every {
                        match p.checkpoint_in_background() {
                            Ok(true) => since_checkpoint = 0,
                            Ok(false) => {}
                            Err(e) => error = Some(e),
                        }
                    }
                }
                let write_error = writer.join().unwrap_or_else(|_| {
                    Some(FetchError::Config("the write thread panicked".to_owned()))
                });
                let _ = done_tx.send((p, write_error.or(error)));
            })
            .map_err(spawn_err)?;
        Ok(Self { tx, done })
    }

    /// Waits until every queued byte is written and hashed, and takes the partial back with the
    /// first error of the pipeline, if any.
    pub async fn stop(self) -> Result<(Partial, Option<FetchError>), FetchError> {
        drop(self.tx);
        self.done
            .await
            .map_err(|_| FetchError::Config("the download thread died".to_owned()))
    }
}
