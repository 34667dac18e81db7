//! What runs beside a run's processes: the log writer, which sends output
//! to the server in order, and the watcher, which heartbeats and stops the
//! processes when the run is canceled, its lease lost or the shutdown
//! grace over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::{Control, Heartbeat};

/// What the log writer receives: output, or a request to confirm that
/// everything before it is stored.
enum LogItem {
    Chunk(Vec<u8>),
    Flush(oneshot::Sender<()>),
}

/// The most output a worker holds that the server has not taken yet; a
/// phase that prints faster than its log can be sent loses the excess
/// (counted, and said in the log) instead of filling the worker's memory.
pub(super) const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;

/// Output waiting for the writer, and output dropped past the bound.
#[derive(Default)]
struct Queue {
    bytes: AtomicUsize,
    dropped: AtomicUsize,
}

/// Sends log output to the writer.
#[derive(Clone)]
pub(super) struct LogSender {
    items: mpsc::UnboundedSender<LogItem>,
    queue: Arc<Queue>,
}

impl LogSender {
    pub(super) fn send(&self, chunk: Vec<u8>) {
        let len = chunk.len();
        let queued = self.queue.bytes.fetch_add(len, Ordering::SeqCst);
        if queued + len > MAX_QUEUED_BYTES {
            self.queue.bytes.fetch_sub(len, Ordering::SeqCst);
            self.queue.dropped.fetch_add(len, Ordering::SeqCst);
            return;
        }
        let _ = self.items.send(LogItem::Chunk(chunk));
    }

    pub(super) fn line(&self, line: &str) {
        self.send(format!("{line}\n").into_bytes());
    }

    /// Waits until everything sent so far is stored, so that a step
    /// reported next is never ahead of its log.
    pub(super) async fn flush(&self) {
        let (done, stored) = oneshot::channel();
        if self.items.send(LogItem::Flush(done)).is_ok() {
            let _ = stored.await;
        }
    }
}

/// Sends log chunks to the server in order, as they come, joining what
/// arrived while the previous chunk was being sent.
pub(super) fn log_writer<C: Control>(
    control: Arc<C>,
    run: String,
) -> (LogSender, tokio::task::JoinHandle<()>) {
    let (sender, mut receiver) = mpsc::unbounded_channel::<LogItem>();
    let queue = Arc::new(Queue::default());
    let held = queue.clone();
    let task = tokio::spawn(async move {
        let mut pending: Vec<u8> = Vec::new();
        while let Some(item) = receiver.recv().await {
            let mut flushes = Vec::new();
            let mut next = Some(item);
            while let Some(item) = next {
                match item {
                    LogItem::Chunk(chunk) => pending.extend(chunk),
                    LogItem::Flush(done) => flushes.push(done),
                }
                next = receiver.try_recv().ok();
            }
            let queued_here = pending.len();
            let dropped = held.dropped.swap(0, Ordering::SeqCst);
            if dropped > 0 {
                pending.extend(
                    format!(
                        "\n[Gantry: {dropped} bytes of output were dropped: the phase printed faster \
                         than its log could be sent]\n"
                    )
                    .into_bytes(),
                );
            }
            if !pending.is_empty() {
                let text = String::from_utf8_lossy(&pending).into_owned();
                pending.clear();
                if let Err(error) = control.log(&run, text).await {
                    tracing::warn!(run.id = %run, %error, "cannot store a log chunk");
                }
                // What was queued is taken; the note never was.
                held.bytes.fetch_sub(queued_here, Ordering::SeqCst);
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    });
    (
        LogSender {
            items: sender,
            queue,
        },
        task,
    )
}

/// Why a run's processes were told to stop.
#[derive(Default)]
pub(super) struct StopCause {
    /// The worker is shutting down and the grace period ran out.
    pub(super) shutdown: AtomicBool,
}

/// Heartbeats a few times per lease and turns the cancel signal on when
/// the run was canceled, its lease lost, or the shutdown grace ran out.
pub(super) fn watch_run<C: Control>(
    control: Arc<C>,
    run: String,
    lease: Duration,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    cause: Arc<StopCause>,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (cancel, canceled) = watch::channel(false);
    let task = tokio::spawn(async move {
        let every = (lease / 3).max(Duration::from_millis(200));
        let mut grace_ends = shutdown.borrow().then(|| Instant::now() + grace);
        loop {
            let wake = grace_ends.map_or(every, |end| {
                every.min(end.saturating_duration_since(Instant::now()))
            });
            tokio::select! {
                () = tokio::time::sleep(wake) => {}
                changed = shutdown.changed(), if grace_ends.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        grace_ends = Some(Instant::now() + grace);
                    }
                    continue;
                }
            }
            if grace_ends.is_some_and(|end| Instant::now() >= end) {
                cause.shutdown.store(true, Ordering::SeqCst);
                let _ = cancel.send(true);
                return;
            }
            match control.heartbeat(&run).await {
                Ok(Heartbeat { keep_going: false }) => {
                    let _ = cancel.send(true);
                    return;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(run.id = %run, %error, "heartbeat failed; trying again");
                }
            }
        }
    });
    (canceled, task)
}
