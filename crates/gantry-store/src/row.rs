//! Stored values are parsed once, here at the store's boundary: a row
//! whose column does not hold what Gantry wrote is an error that names
//! the table, the row and the column, never a silent default.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StoreError;

/// The row being read, for naming it in errors.
pub(crate) struct Fields<'a> {
    pub table: &'static str,
    pub id: &'a str,
}

impl Fields<'_> {
    pub fn corrupt(&self, column: &'static str, problem: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            table: self.table,
            id: self.id.to_owned(),
            column,
            problem: problem.into(),
        }
    }

    /// A JSON column.
    pub fn json<T: DeserializeOwned>(
        &self,
        column: &'static str,
        raw: &str,
    ) -> Result<T, StoreError> {
        serde_json::from_str(raw)
            .map_err(|error| self.corrupt(column, format!("{error} in {raw:?}")))
    }

    /// A boolean stored as 0 or 1.
    pub fn flag(&self, column: &'static str, raw: i64) -> Result<bool, StoreError> {
        match raw {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.corrupt(column, format!("{other} is not 0 or 1"))),
        }
    }

    /// A name from a closed set, such as a run state.
    pub fn parse<T>(
        &self,
        column: &'static str,
        raw: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, StoreError> {
        parse(raw).ok_or_else(|| self.corrupt(column, format!("{raw:?} is not a known value")))
    }
}

/// A value as its JSON column text.
pub(crate) fn to_json(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .map(|value| value.to_string())
        .unwrap_or_else(|error| unreachable!("plain data always serializes: {error}"))
}
