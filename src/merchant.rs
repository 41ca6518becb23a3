//! Validated merchant identifiers.
