//! Helpers shared by every test module: each one is compiled once, for the one test binary.

pub mod bin;
pub mod cli;
pub mod conv;
pub mod demo;
pub mod fake_openai;
pub mod kb;
pub mod model;
pub mod payments;
pub mod redis;
pub mod serve;
