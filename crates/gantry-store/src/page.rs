use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::QueryAs;
use sqlx::{Any, FromRow};

use crate::{Conn, StoreError};

/// The default and the largest page size of every list.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// A position in a list ordered newest first: the `(created_at, id)` of the
/// last item of the previous page. Opaque to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub at: i64,
    pub id: String,
}

#[derive(Debug, thiserror::Error)]
#[error("`cursor` {0:?} is not a cursor this server gave out; start again without it")]
pub struct CursorError(String);

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}/{}", self.at, self.id))
    }

    pub fn decode(raw: &str) -> Result<Self, CursorError> {
        let bad = || CursorError(raw.to_owned());
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (at, id) = text.split_once('/').ok_or_else(bad)?;
        Ok(Self {
            at: at.parse().map_err(|_| bad())?,
            id: id.to_owned(),
        })
    }
}

/// A page request: where to start and how many items at most.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub after: Option<Cursor>,
    pub limit: u32,
}

impl Page {
    pub fn new(after: Option<Cursor>, limit: Option<u32>) -> Self {
        Self {
            after,
            limit: limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
        }
    }

    /// The `(at, id)` bounds for a `WHERE (t < $a OR (t = $a AND id < $b))`
    /// clause: without a cursor the bounds admit everything.
    pub(crate) fn bounds(&self) -> (i64, String) {
        match &self.after {
            Some(cursor) => (cursor.at, cursor.id.clone()),
            None => (i64::MAX, String::new()),
        }
    }

    /// Rows fetched per page: one more than the limit, to know whether a
    /// next page exists.
    pub(crate) fn fetch_limit(&self) -> i64 {
        i64::from(self.limit) + 1
    }

    /// Runs a list query whose last three parameters are left for the
    /// page (`at` and `id` of the cursor, then the fetch limit), and cuts
    /// the page; `key` gives a row's `(at, id)`.
    pub(crate) async fn fetch<'q, T>(
        &self,
        conn: &mut Conn,
        query: QueryAs<'q, Any, T, AnyArguments<'q>>,
        key: impl Fn(&T) -> (i64, &str),
    ) -> Result<(Vec<T>, Option<Cursor>), StoreError>
    where
        T: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
    {
        let (at, id) = self.bounds();
        let rows = query
            .bind(at)
            .bind(id)
            .bind(self.fetch_limit())
            .fetch_all(conn)
            .await?;
        Ok(self.finish(rows, |row| {
            let (at, id) = key(row);
            Cursor {
                at,
                id: id.to_owned(),
            }
        }))
    }

    /// Cuts a fetched batch to the limit and makes the next cursor.
    pub(crate) fn finish<T>(
        &self,
        mut rows: Vec<T>,
        key: impl Fn(&T) -> Cursor,
    ) -> (Vec<T>, Option<Cursor>) {
        let limit = self.limit as usize;
        if rows.len() > limit {
            rows.truncate(limit);
            let next = rows.last().map(key);
            (rows, next)
        } else {
            (rows, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor {
            at: 1_700_000_000_000,
            id: "a/b".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).ok(), Some(cursor));
        assert!(Cursor::decode("not a cursor").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("x/y")).is_err());
    }
}
