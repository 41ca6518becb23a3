//! planner: see ARCHITECTURE.md.
