//! Task planning (LLM-built dependency graphs executed with the agent's guards): not built yet; see issue 7.
