//! Following a run's log live (`GET /api/v1/runs/{id}/logs?follow=true`):
//! server-sent events of the chunks as they are stored, then the run's
//! final state.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use gantry_store::runs;

use crate::state::AppState;

/// At most this many chunks are read per query.
const BATCH: i64 = 200;

/// The events of a run's log after chunk `after`, until the run ends.
pub fn follow(
    state: AppState,
    run_id: String,
    after: i64,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = futures_util::stream::unfold(Some((state, run_id, after)), |cursor| async move {
        let (state, run_id, mut after) = cursor?;
        loop {
            // Registered before reading, so a chunk stored meanwhile
            // wakes this stream.
            let signal = state.logs_signal.clone();
            let notified = signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let read = async {
                let mut conn = state.store.conn().await?;
                // The state is read first: a run that ended has all
                // its log stored, so what is read after it is all.
                let run = runs::get(&mut conn, &run_id).await?;
                let chunks = runs::log_since(&mut conn, &run_id, after, BATCH).await?;
                Ok::<_, gantry_store::StoreError>((run, chunks))
            };
            let (run, chunks) = match read.await {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(run.id = %run_id, %error, "cannot read a followed log");
                    let event = Event::default()
                        .event("error")
                        .data("the server failed to read the log");
                    return Some((Ok(event), None));
                }
            };
            if !chunks.is_empty() {
                let mut text = String::new();
                for (seq, chunk) in chunks {
                    text.push_str(&chunk);
                    after = seq;
                }
                let event = Event::default()
                    .event("log")
                    .id(after.to_string())
                    .data(text.replace("\r\n", "\n").replace('\r', "\n"));
                return Some((Ok(event), Some((state, run_id, after))));
            }
            let ended = run.as_ref().is_none_or(|run| run.state.is_terminal());
            if ended {
                let data = serde_json::json!({
                    "state": run.as_ref().map(|r| r.state.as_str()),
                    "reason": run.as_ref().and_then(|r| r.reason.as_deref()),
                });
                let event = Event::default().event("end").data(data.to_string());
                return Some((Ok(event), None));
            }
            // Workers of other servers wake nobody here: look again
            // now and then. A server shutting down ends the stream; the
            // client reconnects with Last-Event-ID.
            let mut stopping = state.shutting_down.clone();
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopping.wait_for(|stop| *stop) => return None,
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
