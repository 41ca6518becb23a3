//! Reading files into [`Block`]s: type by extension, then checks (unreadable, binary, invalid
//! UTF-8, empty) that turn a file into a one-line skip reason instead of an error.

use std::path::Path;

use super::chunk::Block;
use super::html::html_segments;
use super::markdown::{blocks_from_segments, markdown_segments, text_segments};

/// The document formats the knowledge base reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `.md`, `.markdown`
    Markdown,
    /// `.txt`
    Text,
    /// `.html`, `.htm`
    Html,
    /// `.jsonl`: `{"id"?, "text", "metadata"?}` per line.
    Jsonl,
}

impl FileKind {
    /// The kind for `path`'s extension (case-insensitive), if supported.
    pub fn of(path: &Path) -> Option<FileKind> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "md" | "markdown" => Some(FileKind::Markdown),
            "txt" => Some(FileKind::Text),
            "html" | "htm" => Some(FileKind::Html),
            "jsonl" => Some(FileKind::Jsonl),
            _ => None,
        }
    }
}

/// Why a file was not ingested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// It could not be read.
    Unreadable(String),
    /// It looks binary (contains NUL bytes).
    Binary,
    /// It is not valid UTF-8.
    InvalidUtf8,
    /// It has no text.
    Empty,
    /// Its extension is not a supported format.
    Unsupported,
    /// A symbolic link, not followed (the default).
    Link,
    /// A symbolic link whose target (given) lies outside every ingested root.
    LinkOutside(std::path::PathBuf),
    /// A FIFO, socket or device (named): never opened.
    NotRegular(String),
}

impl SkipReason {
    /// Whether the path exists but could not be read (an OS error): such paths keep their
    /// stored documents under `--prune` and make the ingestion report a partial result.
    pub fn is_unreadable(&self) -> bool {
        matches!(self, SkipReason::Unreadable(_))
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Unreadable(e) => write!(f, "unreadable ({e})"),
            SkipReason::Binary => write!(f, "binary file"),
            SkipReason::InvalidUtf8 => write!(f, "not valid UTF-8"),
            SkipReason::Empty => write!(f, "no text"),
            SkipReason::Link => write!(
                f,
                "symbolic link not followed (use --follow-symlinks to follow links that stay inside the given paths)"
            ),
            SkipReason::LinkOutside(target) => write!(
                f,
                "symbolic link to {} is outside the given paths; not followed",
                super::text::display_path(target)
            ),
            SkipReason::NotRegular(kind) => write!(f, "{kind}, not a regular file; not read"),
            SkipReason::Unsupported => {
                write!(
                    f,
                    "unsupported file type (use .md, .markdown, .txt, .html, .htm or .jsonl)"
                )
            }
        }
    }
}

/// Reads the regular file at `path` without following a symbolic link in its last component
/// and without blocking on a FIFO swapped in since the walk: the file is opened non-blocking
/// and read only when the opened handle is a regular file.
pub fn read_regular(path: &Path) -> Result<Vec<u8>, SkipReason> {
    use std::io::Read;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    }
    let unreadable = |e: std::io::Error| SkipReason::Unreadable(e.to_string());
    let mut file = options.open(path).map_err(|e| {
        #[cfg(unix)]
        if e.raw_os_error() == Some(libc::ELOOP) {
            return SkipReason::Link;
        }
        unreadable(e)
    })?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(SkipReason::NotRegular("a special file".into()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0).min(1 << 26));
    file.read_to_end(&mut bytes).map_err(unreadable)?;
    Ok(bytes)
}

/// Checks raw bytes and returns the text.
pub fn decode(bytes: &[u8]) -> Result<&str, SkipReason> {
    let head = &bytes[..bytes.len().min(8192)];
    if head.contains(&0) {
        return Err(SkipReason::Binary);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| SkipReason::InvalidUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(SkipReason::Empty);
    }
    Ok(text)
}

/// Parses decoded text of `kind` into blocks. Returns the blocks and one warning per JSONL
/// line that could not be used.
pub fn parse(kind: FileKind, text: &str) -> (Vec<Block>, Vec<String>) {
    match kind {
        FileKind::Markdown => (blocks_from_segments(markdown_segments(text)), Vec::new()),
        FileKind::Text => (blocks_from_segments(text_segments(text)), Vec::new()),
        FileKind::Html => (blocks_from_segments(html_segments(text)), Vec::new()),
        FileKind::Jsonl => parse_jsonl(text),
    }
}

fn parse_jsonl(text: &str) -> (Vec<Block>, Vec<String>) {
    let mut blocks = Vec::new();
    let mut warnings = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                warnings.push(format!("line {lineno}: not JSON ({e})"));
                continue;
            }
        };
        let Some(body) = value.get("text").and_then(|t| t.as_str()) else {
            warnings.push(format!("line {lineno}: no \"text\" string"));
            continue;
        };
        if body.trim().is_empty() {
            continue;
        }
        let mut meta = serde_json::Map::new();
        if let Some(id) = value.get("id").filter(|v| !v.is_null()) {
            meta.insert("id".into(), id.clone());
        }
        if let Some(m) = value.get("metadata").filter(|v| !v.is_null()) {
            meta.insert("metadata".into(), m.clone());
        }
        blocks.push(Block {
            heading: Vec::new(),
            text: body.to_string(),
            line_start: lineno,
            line_end: lineno,
            group: i,
            metadata: if meta.is_empty() {
                None
            } else {
                Some(serde_json::Value::Object(meta).to_string())
            },
        });
    }
    (blocks, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_extension() {
        assert_eq!(FileKind::of(Path::new("a/B.MD")), Some(FileKind::Markdown));
        assert_eq!(FileKind::of(Path::new("x.htm")), Some(FileKind::Html));
        assert_eq!(FileKind::of(Path::new("x.pdf")), None);
        assert_eq!(FileKind::of(Path::new("README")), None);
    }

    #[test]
    fn decode_rejects_binary_invalid_and_empty() {
        assert_eq!(decode(b"ab\0cd"), Err(SkipReason::Binary));
        assert_eq!(decode(&[0x66, 0xff, 0xfe]), Err(SkipReason::InvalidUtf8));
        assert_eq!(decode(b" \n\t "), Err(SkipReason::Empty));
        assert_eq!(decode("\u{feff}hi".as_bytes()), Ok("hi"));
    }

    #[test]
    fn jsonl_records_and_bad_lines() {
        let text = "{\"id\": \"r1\", \"text\": \"hello\", \"metadata\": {\"lang\": \"en\"}}\nnot json\n{\"text\": 5}\n\n{\"text\": \"bye\"}\n";
        let (blocks, warnings) = parse(FileKind::Jsonl, text);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].line_start, 1);
        assert_eq!(blocks[1].line_start, 5);
        assert_ne!(blocks[0].group, blocks[1].group);
        let meta: serde_json::Value =
            serde_json::from_str(blocks[0].metadata.as_deref().unwrap_or("null"))
                .unwrap_or_default();
        assert_eq!(meta["id"], "r1");
        assert_eq!(meta["metadata"]["lang"], "en");
        assert_eq!(warnings.len(), 2);
    }
}
