//! Handlers, one module per resource.

pub mod api_keys;
pub mod audit;
pub mod deliveries;
pub mod fields;
pub mod health;
pub mod integrations;
pub mod me;
pub mod modules;
pub mod registry;
pub mod runs;
pub mod spaces;
pub mod stacks;
pub mod vcs_agent_pools;
pub mod webhooks;
pub mod worker;
