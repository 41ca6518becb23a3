//! memex's integration tests, linked as one binary (as ripgrep does): one module per area,
//! the shared helpers in `support/` (the `memex` binary, the model, a real Redis, the fake
//! OpenAI-compatible server). One binary links once; 49 separate ones each linked the whole
//! crate and its dependencies again.
//!
//! Run one area with a filter on its module path: `cargo test --release --test integration kb_cli::`.

mod support;

mod agent;
mod agent_cli;
mod agent_core;
mod agent_paths;
mod answer_model;
mod architecture;
mod cli_conventions;
mod config_cli;
mod conversation;
mod conversation_conformance;
mod conversation_redis;
mod embed_cli;
mod embed_kb_precision;
mod embed_parity;
mod embed_precision;
mod episodes_cli;
mod episodes_import_cli;
mod episodic_conformance;
mod episodic_faults;
mod eval_cases;
mod eval_locomo_cli;
mod forget_agent_cli;
mod forget_cli;
mod forget_redis_cli;
mod fuzz_parsers;
mod hostile_agent_cli;
mod index_recall;
mod kb_cli;
mod kb_faults;
mod kb_ingest;
mod kb_linear;
mod kb_parsers_fuzz;
mod kb_paths;
mod llm_client;
mod mcp_cli;
mod payments_db;
mod payments_tools;
mod plan_state_conformance;
mod planner;
mod planner_cli;
mod scaleout_agent;
mod scaleout_episodes;
mod scaleout_kb;
mod scaleout_plans;
mod serve_agent;
mod serve_http;
mod serve_import;
mod state_conformance;
mod tool_sources;
mod tools_registry;
