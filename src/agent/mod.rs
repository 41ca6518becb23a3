//! agent: see ARCHITECTURE.md.
