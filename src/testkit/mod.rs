//! Test and benchmark support, compiled only with the `test-util` cargo feature (the tests and
//! benches turn it on through memex's dev-dependency on itself; the default library and the
//! shipped binary carry none of it).
//!
//! * [`dataset`] — realistic vector sets (real MiniLM embeddings of the repository's corpus,
//!   extended by perturbation or by mixing real neighbours) for the recall tests and the
//!   retrieval benchmarks, cached in a checksummed file;
//! * the scripted chat model stays at [`crate::llm::ScriptedModel`] (same feature).

pub mod dataset;
