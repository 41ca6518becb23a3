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
pub mod serve;
pub mod sources;
pub mod sqlite;
pub mod state;
#[cfg(feature = "test-util")]
pub mod testkit;
pub mod tools;
