//! # memex
//!
//! Local-first memory and retrieval for production AI agents:
//!
//! * [`embed`] — all-MiniLM-L6-v2 sentence embeddings computed in-process with candle;
//! * [`index`] — HNSW and exact vector search over normalised vectors;
//! * [`kb`] — the knowledge base (semantic memory): loaders, chunking, SQLite + FTS5, hybrid search;
//! * [`episodic`] — per-merchant episodes (SQLite or Redis);
//! * [`conversation`] — the token-budgeted conversation buffer with a rolling summary;
//! * [`llm`] — the OpenAI-compatible chat client;
//! * [`tools`], [`agent`], [`domain`], [`planner`] — the agent runtime on top;
//! * [`sqlite`] and [`fsutil`] — the shared plumbing: the one SQLite opener, the one atomic file write.
//!
//! ## Where to start
//!
//! Four short programs in `examples/` each show one piece through this API (run them with
//! `cargo run --release --example NAME`; all but `episodes` need the model: `memex model fetch`,
//! or `MEMEX_MODEL_DIR` pointing at a directory holding it):
//!
//! * `embed_search.rs` — load [`embed::MiniLmEmbedder`] (the [`embed::Embedder`] trait), embed
//!   texts, build an [`index::HnswIndex`] and search it ([`index::VectorIndex`]);
//! * `kb_ask.rs` — [`kb::KnowledgeBase::open`] a directory, [`ingest`](kb::KnowledgeBase::ingest)
//!   a folder, [`search`](kb::KnowledgeBase::search) it in [`kb::SearchMode::Hybrid`]; each
//!   [`kb::SearchHit`] names its source file and lines;
//! * `episodes.rs` — [`episodic::open`] a SQLite (or Redis) [`episodic::EpisodicStore`], save
//!   [`episodic::EpisodeDraft`]s for a [`merchant::MerchantId`] and recall them with an
//!   [`episodic::SearchQuery`]; another merchant never sees them;
//! * `agent_turn.rs` — an [`agent::Agent`] with a custom [`tools::Tool`] in a
//!   [`tools::ToolRegistry`], run for one turn ([`agent::Agent::ask`] returns an
//!   [`agent::TurnReport`]) against `llm::ScriptedModel` (the `test-util` feature); in an
//!   application the model is [`llm::OpenAiCompatible`] behind the [`llm::ChatModel`] trait.
//!
//! The model directory the CLI uses is `--model-dir` / `MEMEX_MODEL_DIR`, else
//! [`paths::default_model_dir`]. The `memex` binary (`src/main.rs`, `src/cli/`) is built on this
//! same API. `examples/probes/` holds benchmark and profiling programs, not starting points.
//!
//! See `ARCHITECTURE.md` at the repository root for the code map and invariants.
#![warn(missing_docs)]

pub mod agent;
pub mod approvals;
pub mod conversation;
pub mod domain;
pub mod embed;
pub mod episodic;
pub mod eval;
pub mod fsutil;
pub mod index;
pub mod kb;
pub mod llm;
pub mod mcp;
pub mod merchant;
pub mod offload;
pub mod paths;
pub mod planner;
pub mod redisdb;
pub mod serve;
pub mod sources;
pub mod sqlite;
pub mod state;
pub mod store_url;
#[cfg(feature = "test-util")]
pub mod testkit;
pub mod tools;
