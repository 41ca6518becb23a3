//! Retrieval benchmarks run against the real stores and model (not tests): see [`locomo`].

pub mod locomo;
