//! tools: see ARCHITECTURE.md.
