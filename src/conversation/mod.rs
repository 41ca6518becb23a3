//! conversation: see ARCHITECTURE.md.
