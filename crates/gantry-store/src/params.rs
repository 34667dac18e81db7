//! Statements of many rows at once.

use crate::Backend;

/// `rows` copies of `shape` (such as `(?, ?, 'queued')`), joined by commas.
pub(crate) fn values(rows: usize, shape: &str) -> String {
    vec![shape; rows].join(", ")
}

/// `sql` with its `?`s numbered `$1, $2, …` on PostgreSQL. SQLite keeps
/// the bare `?`s: it looks a numbered parameter up by a linear search,
/// which makes a statement of thousands of `$n` quadratic to bind. (No
/// statement built this way has a `?` in a literal.)
pub(crate) fn numbered(backend: Backend, sql: &str) -> String {
    if backend == Backend::Sqlite {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() * 2);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}
