//! Small text helpers shared by the loaders, the walk, chunking and errors: paths and names
//! made safe to print, and cutting at a character boundary.

use std::path::Path;

/// `path` for display: control characters (newline, ESC, …) escaped, so that a file name can
/// neither forge an output line nor drive the terminal.
pub fn display_path(path: &Path) -> String {
    escape_controls(&path.to_string_lossy())
}

/// A knowledge-base source (the absolute path the store keeps) as shown to a client that must
/// not learn the server's layout: relative to the first of `roots` that holds it (the folder
/// it was ingested from, such as `memex serve`'s `documents/`), else relative to the current
/// directory when inside it (as `memex search` prints it; a current directory of `/` does not
/// count), else its file name only. Control characters are escaped.
pub fn client_source(source: &str, roots: &[std::path::PathBuf]) -> String {
    let path = Path::new(source);
    let cwd = std::env::current_dir()
        .ok()
        .filter(|d| d.components().count() > 1);
    let candidates = roots.iter().cloned().chain(cwd);
    for root in candidates {
        let canonical = std::fs::canonicalize(&root).ok();
        for r in std::iter::once(root).chain(canonical) {
            if let Ok(rel) = path.strip_prefix(&r) {
                if rel.as_os_str().is_empty() {
                    continue;
                }
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                return escape_controls(&rel.join("/"));
            }
        }
    }
    match path.file_name() {
        Some(name) => escape_controls(&name.to_string_lossy()),
        None => String::new(),
    }
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
    fn client_sources_never_show_a_server_path() {
        let roots = vec![std::path::PathBuf::from("/srv/memex/documents")];
        assert_eq!(
            client_source("/srv/memex/documents/guides/refunds.md", &roots),
            "guides/refunds.md"
        );
        assert_eq!(client_source("/elsewhere/kb/faq.md", &roots), "faq.md");
        assert_eq!(client_source("/srv/memex/documents", &roots), "documents");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        assert_eq!(escape_controls("plain é"), "plain é");
    }
}
