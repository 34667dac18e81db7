//! Request fields that several resources share, parsed once.

use gantry_domain::{Name, Slug};
use gantry_store::spaces::ROOT;

use crate::error::ApiError;

/// A resource's name, trimmed, and the id made from its slug.
pub fn named(raw: &str) -> Result<(Name, Slug), ApiError> {
    let name = Name::parse(raw)?;
    let id = name.slug()?;
    Ok((name, id))
}

/// The space a request names, `root` when it names none.
pub fn space_or_root(raw: Option<&str>) -> String {
    raw.map_or(ROOT, str::trim).to_owned()
}

const MAX_LABELS: usize = 50;
const MAX_LABEL_CHARS: usize = 100;

/// Labels: trimmed, de-duplicated, at most 50 of 1 to 100 characters.
pub fn labels(raw: Vec<String>) -> Result<Vec<String>, ApiError> {
    if raw.len() > MAX_LABELS {
        return Err(ApiError::invalid(format!(
            "`labels` has {} labels; at most {MAX_LABELS} are allowed",
            raw.len()
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for label in raw {
        let label = label.trim().to_owned();
        if label.is_empty() || label.chars().count() > MAX_LABEL_CHARS {
            return Err(ApiError::invalid(format!(
                "`labels`: {label:?} must be 1 to {MAX_LABEL_CHARS} characters"
            )));
        }
        if !out.contains(&label) {
            out.push(label);
        }
    }
    Ok(out)
}
