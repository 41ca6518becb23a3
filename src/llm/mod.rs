//! llm: see ARCHITECTURE.md.
