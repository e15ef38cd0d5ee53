//! One download attempt of a layer from one source into the partial: Range from the durable
//! offset, restart on a 200, rate limit, the request's total deadline (the caller resumes after it),
//! periodic checkpoints (written and hashed on other threads, see `sink`), verify and rename at the
//! end.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::manifest::OciDescriptor;
use tokio_util::sync::CancellationToken;

use crate::error::FetchError;
use crate::fetch::FetchEvent;
use crate::fetch::resume::Partial;
use crate::fetch::sink::Sink;
use crate::fetch::source::{BlobBody, Source};

/// Progress events are sent at most every this many bytes (and at the end).
const PROGRESS_EVERY: u64 = 256 * 1024;

/// Knobs of one download.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DownloadOpts {
    pub checkpoint_every: u64,
    pub rate_limit_bps: Option<u64>,
}

/// The caller's side of an attempt: knobs, event sink, cancellation and what was achieved.
pub(crate) struct Run<'a> {
    pub opts: DownloadOpts,
    pub events: &'a mut (dyn FnMut(FetchEvent) + Send),
    pub cancel: &'a CancellationToken,
    pub stats: &'a mut AttemptStats,
}

/// What an attempt achieved besides its result.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AttemptStats {
    /// Offset of the partial after the attempt (0 when it was discarded).
    pub kept: u64,
    /// Bytes received in this attempt.
    pub received: u64,
}

/// Downloads `layer` from `source` into `partial`, then verifies and renames into `dest`.
/// On a transient error the partial is checkpointed and kept.
pub(crate) async fn download(
    source: &Source,
    layer: &OciDescriptor,
    partial: &mut Option<Partial>,
    dest: &Path,
    run: &mut Run<'_>,
) -> Result<(), FetchError> {
    let result = transfer(source, layer, partial, run).await;
    let Some(p) = partial.as_mut() else {
        return result;
    };
    run.stats.kept = p.offset();
    match result {
        Ok(()) => {
            let size = layer.size.max(0) as u64;
            let Some(p) = partial.take() else {
                return Ok(());
            };
            p.finish(size, &layer.digest, dest)
        }
        Err(e @ FetchError::DigestMismatch { .. }) => {
            run.stats.kept = 0;
            if let Some(p) = partial.take() {
                p.discard()?;
            }
            Err(e)
        }
        Err(e) if p.offset() == 0 => {
            // Nothing to keep: leave no empty partial behind.
            if let Some(p) = partial.take() {
                p.discard()?;
            }
            Err(e)
        }
        Err(e) => {
            if let Err(ckpt) = p.checkpoint() {
                tracing::warn!(error = %ckpt, "checkpoint after a failed transfer failed");
            }
            Err(e)
        }
    }
}

async fn transfer(
    source: &Source,
    layer: &OciDescriptor,
    partial: &mut Option<Partial>,
    run: &mut Run<'_>,
) -> Result<(), FetchError> {
    let cancel = run.cancel;
    let Some(p) = partial.as_mut() else {
        return Err(FetchError::Config("no partial".to_owned()));
    };
    let size = layer.size.max(0) as u64;
    if p.offset() >= size {
        return Ok(());
    }
    let start = p.offset();
    let body = tokio::select! {
        () = cancel.cancelled() => return Err(FetchError::Cancelled),
        body = source.blob(layer, start) => body?,
    };
    if body.from_start && start > 0 {
        tracing::info!(source = %source.name(), "source ignored the Range request: restarting");
        p.restart()?;
    }
    let Some(p) = partial.take() else {
        return Err(FetchError::Config("no partial".to_owned()));
    };
    let first = p.offset();
    let sink = Sink::spawn(p, run.opts.checkpoint_every)?;
    let result = pump(source, layer, body, first, &sink.tx, run).await;
    let (p, write_error) = sink.stop().await?;
    *partial = Some(p);
    match write_error {
        Some(e) => Err(e),
        None => result,
    }
}

/// Waits until `deadline`; forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Receives the body and queues it to the sink from `first` to the layer size.
async fn pump(
    source: &Source,
    layer: &OciDescriptor,
    body: BlobBody,
    first: u64,
    sink: &tokio::sync::mpsc::Sender<Bytes>,
    run: &mut Run<'_>,
) -> Result<(), FetchError> {
    let Run {
        opts,
        events,
        cancel,
        stats,
    } = run;
    let size = layer.size.max(0) as u64;
    let mut stream = body.stream;
    let deadline = body.deadline;
    let mut offset = first;
    let started = Instant::now();
    let mut received = 0u64;
    let mut reported = offset;
    events(FetchEvent::Progress {
        done: offset,
        total: size,
    });
    while offset < size {
        let next = tokio::select! {
            () = cancel.cancelled() => return Err(FetchError::Cancelled),
            () = until(deadline) => {
                return Err(FetchError::Unreachable {
                    source_name: source.name(),
                    detail: format!(
                        "blob request deadline passed at byte {offset} (resuming with Range)"
                    ),
                });
            }
            next = stream.next() => next,
        };
        let chunk = match next {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                return Err(FetchError::Unreachable {
                    source_name: source.name(),
                    detail: format!("transfer interrupted at byte {offset}: {e}"),
                });
            }
            None => {
                // The body ended before the layer size. If the source sent all it announced,
                // the blob itself is short: the bytes are not what the manifest promised.
                let announced_all = body.content_length.is_some_and(|len| received >= len);
                if announced_all {
                    return Err(FetchError::DigestMismatch {
                        expected: layer.digest.clone(),
                        actual: format!("blob ends at byte {offset}, manifest says {size}"),
                    });
                }
                return Err(FetchError::Unreachable {
                    source_name: source.name(),
                    detail: format!("connection closed at byte {offset}"),
                });
            }
        };
        let len = chunk.len() as u64;
        if offset + len > size {
            return Err(FetchError::DigestMismatch {
                expected: layer.digest.clone(),
                actual: format!("blob is longer than the manifest's {size} bytes"),
            });
        }
        if sink.send(chunk).await.is_err() {
            // The sink stopped on a write error; `stop` reports it.
            return Ok(());
        }
        offset += len;
        received += len;
        stats.received += len;
        // The rate limiter first, progress after: `done` never runs ahead of what the limiter let through
        // (reported `downloading:100` 1.3 s before the download ended otherwise).
        if let Some(bps) = opts.rate_limit_bps.filter(|b| *b > 0) {
            let due = Duration::from_secs_f64((offset - first) as f64 / bps as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                tokio::select! {
                    () = cancel.cancelled() => return Err(FetchError::Cancelled),
                    () = tokio::time::sleep(due - elapsed) => {}
                }
            }
        }
        if offset - reported >= PROGRESS_EVERY || offset == size {
            reported = offset;
            events(FetchEvent::Progress {
                done: reported,
                total: size,
            });
        }
    }
    Ok(())
}
