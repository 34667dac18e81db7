//! Gantry's domain: the types and rules every other crate agrees on.
//!
//! This crate does no IO and has no async: it parses input into types that
//! cannot hold invalid values ("parse, don't validate") and answers questions
//! such as "does this role grant that one".

pub mod event;
pub mod module;
mod name;
pub mod report;
mod role;
pub mod rules;
pub mod run;
pub mod stack;
mod summary;
mod workflow;

pub use name::{Name, NameError, Slug};
pub use role::{Grant, Role, RoleParseError, allows};
pub use summary::Summary;
pub use workflow::{MissingCommand, Workflow};
