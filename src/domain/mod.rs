//! Demo business domains whose tools the agent can call; see ARCHITECTURE.md.

pub mod payments;
