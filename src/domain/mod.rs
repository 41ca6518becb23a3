//! domain: see ARCHITECTURE.md.
