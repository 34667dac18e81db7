//! Tests of `gantry-gitlab`: the real responses of the corpus parse, the
//! client behaves as GitLab's rules ask against the simulated GitLab, and
//! the simulator's answers have the corpus's shapes.

mod client;
mod corpus;
mod sim_shapes;
mod webhooks;
