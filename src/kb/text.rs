//! Small text helpers shared by the loaders, the walk, chunking and errors: paths and names
//! made safe to print, and cutting at a character boundary.

use std::path::Path;

/// `path` for display: control characters (newline, ESC, …) escaped, so that a file name can
/// neither forge an output line nor drive the terminal.
pub fn display_path(path: &Path) -> String {
    escape_controls(&path.to_string_lossy())
}

/// `s` with control characters escaped as `\n`, `\u{1b}`, ….
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `s` cut to at most `max` bytes at a character boundary, with `…` when cut.
pub fn truncate_with_ellipsis(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", s[..cut].trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        assert_eq!(escape_controls("plain é"), "plain é");
    }
}
