//! Tests of the real server on port 0, each on SQLite and on PostgreSQL.

mod api_keys;
mod bad_input;
mod browser;
mod execution;
mod harness;
mod hooks;
mod integrations;
mod isolation;
mod modules;
mod reporting;
mod roles;
mod runs;
mod spaces;
mod stacks;
mod startup;
mod vcs_agents;
mod web;
mod webhooks;
