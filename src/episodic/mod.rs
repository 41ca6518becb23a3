//! episodic: see ARCHITECTURE.md.
