//! Stored values are parsed once, here at the store's boundary: a row
//! whose column does not hold what Gantry wrote is an error that names
//! the table, the row and the column, never a silent default.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::StoreError;

/// A stored value that does not parse. Inside a `FromRow` it travels as
/// `sqlx::Error::Decode` and becomes [`StoreError::Corrupt`] again at the
/// store's boundary.
#[derive(Debug, thiserror::Error)]
#[error("{table} row {id:?} holds a bad `{column}`: {problem}")]
pub(crate) struct Corrupt {
    pub table: &'static str,
    pub id: String,
    pub column: &'static str,
    pub problem: String,
}

impl From<Corrupt> for StoreError {
    fn from(c: Corrupt) -> Self {
        StoreError::Corrupt {
            table: c.table,
            id: c.id,
            column: c.column,
            problem: c.problem,
        }
    }
}

impl From<Corrupt> for sqlx::Error {
    fn from(c: Corrupt) -> Self {
        sqlx::Error::Decode(Box::new(c))
    }
}

/// The row being read, for naming it in errors.
pub(crate) struct Fields<'a> {
    pub table: &'static str,
    pub id: &'a str,
}

impl Fields<'_> {
    pub fn corrupt(&self, column: &'static str, problem: impl Into<String>) -> Corrupt {
        Corrupt {
            table: self.table,
            id: self.id.to_owned(),
            column,
            problem: problem.into(),
        }
    }

    /// A JSON column.
    pub fn json<T: DeserializeOwned>(&self, column: &'static str, raw: &str) -> Result<T, Corrupt> {
        serde_json::from_str(raw)
            .map_err(|error| self.corrupt(column, format!("{error} in {raw:?}")))
    }

    /// A boolean stored as 0 or 1.
    pub fn flag(&self, column: &'static str, raw: i64) -> Result<bool, Corrupt> {
        match raw {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.corrupt(column, format!("{other} is not 0 or 1"))),
        }
    }

    /// A JSON column of `row`.
    pub fn json_in<T: DeserializeOwned>(
        &self,
        row: &AnyRow,
        column: &'static str,
    ) -> Result<T, sqlx::Error> {
        let raw: String = row.try_get(column)?;
        Ok(self.json(column, &raw)?)
    }

    /// A 0-or-1 column of `row`.
    pub fn flag_in(&self, row: &AnyRow, column: &'static str) -> Result<bool, sqlx::Error> {
        Ok(self.flag(column, row.try_get(column)?)?)
    }

    /// A column of `row` holding a name from a closed set.
    pub fn parse_in<T>(
        &self,
        row: &AnyRow,
        column: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, sqlx::Error> {
        let raw: String = row.try_get(column)?;
        Ok(self.parse(column, &raw, parse)?)
    }

    /// A name from a closed set, such as a run state.
    pub fn parse<T>(
        &self,
        column: &'static str,
        raw: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, Corrupt> {
        parse(raw).ok_or_else(|| self.corrupt(column, format!("{raw:?} is not a known value")))
    }
}

/// A value as its JSON column text.
pub(crate) fn to_json(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .map(|value| value.to_string())
        .unwrap_or_else(|error| unreachable!("plain data always serializes: {error}"))
}

/// `INSERT INTO table (columns) VALUES ($1, …)`, for a row bound in the
/// order of `columns`.
pub(crate) fn insert_sql(table: &str, columns: &str) -> String {
    let count = columns.split(", ").count();
    let values: Vec<String> = (1..=count).map(|n| format!("${n}")).collect();
    format!(
        "INSERT INTO {table} ({columns}) VALUES ({})",
        values.join(", ")
    )
}

/// `UPDATE table SET b = $2, … WHERE id = $1`, for a row bound in the
/// order of `columns`, whose first column is `id`.
pub(crate) fn update_sql(table: &str, columns: &str) -> String {
    let sets: Vec<String> = columns
        .split(", ")
        .enumerate()
        .skip(1)
        .map(|(index, column)| format!("{column} = ${}", index + 1))
        .collect();
    format!("UPDATE {table} SET {} WHERE id = $1", sets.join(", "))
}
