//! A run's log: redacted chunks in order, appended only by the worker
//! that holds the run's lease.

use crate::{Conn, Millis, StoreError};

/// Appends a chunk of (already redacted) log to a run, if `owner` holds
/// its lease; `false` when it does not (the run was taken from it). Past
/// the stack's `log_limit_bytes` nothing more is kept: the chunk that
/// reaches the limit is cut and followed by a note, and what comes after
/// is only counted.
pub async fn append_log(
    conn: &mut Conn,
    run_id: &str,
    owner: &str,
    chunk: &str,
    now: Millis,
) -> Result<bool, StoreError> {
    let found: Option<(i64, i64)> = sqlx::query_as(
        "SELECT r.log_bytes, s.log_limit_bytes FROM runs r JOIN stacks s ON s.id = r.stack_id \
         WHERE r.id = $1 AND r.lease_owner = $2",
    )
    .bind(run_id)
    .bind(owner)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((stored, limit)) = found else {
        return Ok(false);
    };
    let room = usize::try_from(limit.saturating_sub(stored)).unwrap_or(0);
    let kept = if chunk.len() <= room {
        chunk.to_owned()
    } else if room > 0 {
        let mut cut = room;
        while !chunk.is_char_boundary(cut) {
            cut -= 1;
        }
        format!(
            "{}\n[Gantry: the log reached this stack's limit of {limit} bytes; the rest of the output is not kept]\n",
            &chunk[..cut]
        )
    } else {
        String::new()
    };
    let counted = i64::try_from(chunk.len()).unwrap_or(i64::MAX);
    let kept_bytes = i64::try_from(kept.len().min(chunk.len())).unwrap_or(i64::MAX);
    if !kept.is_empty() {
        sqlx::query(
            "INSERT INTO run_logs (run_id, seq, at, chunk) \
             SELECT $1, COALESCE((SELECT MAX(seq) FROM run_logs WHERE run_id = $1), -1) + 1, $2, $3",
        )
        .bind(run_id)
        .bind(now.0)
        .bind(&kept)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "UPDATE runs SET log_bytes = log_bytes + $2, log_dropped_bytes = log_dropped_bytes + $3 WHERE id = $1",
    )
    .bind(run_id)
    .bind(kept_bytes)
    .bind(counted - kept_bytes)
    .execute(conn)
    .await?;
    Ok(true)
}

/// The log chunks of a run after chunk `after` (-1 for all), in order, at
/// most `limit`.
pub async fn log_since(
    conn: &mut Conn,
    run_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT seq, chunk FROM run_logs WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(run_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// A run's whole log, in order.
pub async fn log(conn: &mut Conn, run_id: &str) -> Result<String, StoreError> {
    let chunks: Vec<(String,)> =
        sqlx::query_as("SELECT chunk FROM run_logs WHERE run_id = $1 ORDER BY seq")
            .bind(run_id)
            .fetch_all(&mut *conn)
            .await?;
    let mut text: String = chunks.into_iter().map(|(chunk,)| chunk).collect();
    let (dropped,): (i64,) =
        sqlx::query_as("SELECT COALESCE(MAX(log_dropped_bytes), 0) FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(conn)
            .await?;
    if dropped > 0 {
        text.push_str(&format!(
            "[Gantry: {dropped} bytes of output past the limit were not kept]\n"
        ));
    }
    Ok(text)
}

/// The end of a run's log, for a page that shows it: the newest chunks up
/// to about `max_bytes`, the number of the last chunk (-1 for none; a
/// follower goes on after it), and whether earlier output was left out.
/// Chunks are read newest first in growing batches (1, 4, 16, … at most
/// 256), so a huge log costs about what its end does.
pub async fn log_tail(
    conn: &mut Conn,
    run_id: &str,
    max_bytes: usize,
) -> Result<(String, i64, bool), StoreError> {
    let mut kept: Vec<String> = Vec::new();
    let (mut size, mut last, mut before, mut batch) = (0, -1, i64::MAX, 1);
    let cut = 'read: loop {
        let newest: Vec<(i64, String)> = sqlx::query_as(
            "SELECT seq, chunk FROM run_logs WHERE run_id = $1 AND seq < $2 \
             ORDER BY seq DESC LIMIT $3",
        )
        .bind(run_id)
        .bind(before)
        .bind(batch)
        .fetch_all(&mut *conn)
        .await?;
        let exhausted = (newest.len() as i64) < batch;
        for (seq, chunk) in newest {
            if last < 0 {
                last = seq;
            }
            before = seq;
            if size + chunk.len() > max_bytes {
                // The end of this chunk that still fits, from a char boundary.
                let mut start = chunk.len() - (max_bytes - size);
                while !chunk.is_char_boundary(start) {
                    start += 1;
                }
                kept.push(chunk[start..].to_owned());
                break 'read true;
            }
            size += chunk.len();
            kept.push(chunk);
        }
        if exhausted {
            // Chunks are numbered from 0: a log that does not reach chunk
            // 0 lost its beginning to retention.
            break before > 0 && before != i64::MAX;
        }
        batch = (batch * 4).min(256);
    };
    kept.reverse();
    Ok((kept.concat(), last, cut))
}
