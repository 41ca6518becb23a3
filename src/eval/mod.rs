//! Evaluations: retrieval benchmarks run against the real stores and model ([`locomo`]), and
//! stored agent sessions as test cases, exported ([`cases`]) and replayed against a model
//! ([`replay`]).

pub mod cases;
pub mod locomo;
pub mod replay;
