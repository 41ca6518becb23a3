//! kb: see ARCHITECTURE.md.
