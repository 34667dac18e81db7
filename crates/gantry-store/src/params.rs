//! Statements of many rows at once.

use crate::Backend;

/// `rows` copies of `shape` (such as `(?, ?, 'queued')`), joined by commas,
/// its `?`s numbered `$1, $2, …` on PostgreSQL. SQLite keeps the bare
/// `?`s: it looks a named parameter up by a linear search, which makes a
/// statement of thousands of `$n` parameters quadratic to bind.
pub(crate) fn values(backend: Backend, rows: usize, shape: &str) -> String {
    let all = vec![shape; rows].join(", ");
    if backend == Backend::Sqlite {
        return all;
    }
    let mut numbered = String::with_capacity(all.len() * 2);
    let mut n = 0;
    for c in all.chars() {
        if c == '?' {
            n += 1;
            numbered.push('$');
            numbered.push_str(&n.to_string());
        } else {
            numbered.push(c);
        }
    }
    numbered
}
