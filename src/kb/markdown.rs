//! Markdown and plain text to [`Block`]s: ATX headings set the heading path, blank lines
//! separate paragraphs, fenced code stays whole, YAML front matter is skipped.

use super::chunk::Block;

/// A structural element with source lines (1-based), shared by the Markdown and HTML readers.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// A heading of `level` (1–6).
    Heading {
        /// 1 for `#`/`<h1>`, up to 6.
        level: u8,
        /// The heading text.
        text: String,
    },
    /// A paragraph-like run of text.
    Para {
        /// The text.
        text: String,
        /// First line.
        start: usize,
        /// Last line.
        end: usize,
    },
}

/// Turns segments into blocks: each heading opens a new group and updates the heading path.
pub fn blocks_from_segments(segments: Vec<Segment>) -> Vec<Block> {
    let mut stack: Vec<(u8, String)> = Vec::new();
    let mut group = 0usize;
    let mut out = Vec::new();
    for seg in segments {
        match seg {
            Segment::Heading { level, text } => {
                while stack.last().is_some_and(|(l, _)| *l >= level) {
                    stack.pop();
                }
                stack.push((level, text));
                group += 1;
            }
            Segment::Para { text, start, end } => {
                if text.trim().is_empty() {
                    continue;
                }
                out.push(Block {
                    heading: stack.iter().map(|(_, t)| t.clone()).collect(),
                    text,
                    line_start: start,
                    line_end: end,
                    group,
                    metadata: None,
                });
            }
        }
    }
    out
}

fn atx_heading(line: &str) -> Option<(u8, String)> {
    let trimmed = line.trim_start();
    if line.len() - trimmed.len() > 3 {
        return None;
    }
    let hashes = trimmed.bytes().take_while(|&b| b == b'#').count();
    if hashes == 0 || hashes > 6 {
        return None;
    }
    let rest = &trimmed[hashes..];
    if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
        return None;
    }
    let text = rest.trim().trim_end_matches('#').trim().to_string();
    if text.is_empty() {
        return None;
    }
    Some((hashes as u8, text))
}

fn fence(line: &str) -> Option<&'static str> {
    let t = line.trim_start();
    if t.starts_with("```") {
        Some("```")
    } else if t.starts_with("~~~") {
        Some("~~~")
    } else {
        None
    }
}

/// Parses Markdown into segments.
pub fn markdown_segments(text: &str) -> Vec<Segment> {
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    // YAML front matter.
    if lines.first().is_some_and(|l| l.trim() == "---") {
        if let Some(end) = lines
            .iter()
            .skip(1)
            .position(|l| l.trim() == "---" || l.trim() == "...")
        {
            i = end + 2;
        }
    }
    let mut out = Vec::new();
    let mut para: Vec<&str> = Vec::new();
    let mut para_start = 0usize;
    let flush = |para: &mut Vec<&str>, start: usize, out: &mut Vec<Segment>| {
        if !para.is_empty() {
            out.push(Segment::Para {
                text: para.join("\n"),
                start,
                end: start + para.len() - 1,
            });
            para.clear();
        }
    };
    while i < lines.len() {
        let line = lines[i];
        let lineno = i + 1;
        if let Some(marker) = fence(line) {
            flush(&mut para, para_start, &mut out);
            let start = lineno;
            let mut body = vec![line];
            i += 1;
            while i < lines.len() {
                body.push(lines[i]);
                i += 1;
                if lines[i - 1].trim_start().starts_with(marker) {
                    break;
                }
            }
            out.push(Segment::Para {
                text: body.join("\n"),
                start,
                end: start + body.len() - 1,
            });
            continue;
        }
        if let Some((level, text)) = atx_heading(line) {
            flush(&mut para, para_start, &mut out);
            out.push(Segment::Heading { level, text });
        } else if line.trim().is_empty() {
            flush(&mut para, para_start, &mut out);
        } else {
            if para.is_empty() {
                para_start = lineno;
            }
            para.push(line);
        }
        i += 1;
    }
    flush(&mut para, para_start, &mut out);
    out
}

/// Parses plain text: paragraphs separated by blank lines, no headings.
pub fn text_segments(text: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut para: Vec<&str> = Vec::new();
    let mut start = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if !para.is_empty() {
                out.push(Segment::Para {
                    text: para.join("\n"),
                    start,
                    end: start + para.len() - 1,
                });
                para.clear();
            }
        } else {
            if para.is_empty() {
                start = i + 1;
            }
            para.push(line);
        }
    }
    if !para.is_empty() {
        out.push(Segment::Para {
            text: para.join("\n"),
            start,
            end: start + para.len() - 1,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_build_paths_and_spans() {
        let md = "---\ntitle: x\n---\n# Refunds\n\nIntro line.\n\n## Cards\nTakes 5-7 days.\nSecond line.\n\n```\n# not a heading\n\ncode\n```\n## UPI\nInstant.\n# Other ###\ntext";
        let blocks = blocks_from_segments(markdown_segments(md));
        let summary: Vec<(String, String, usize, usize)> = blocks
            .iter()
            .map(|b| {
                (
                    b.heading.join(">"),
                    b.text.clone(),
                    b.line_start,
                    b.line_end,
                )
            })
            .collect();
        assert_eq!(summary[0], ("Refunds".into(), "Intro line.".into(), 6, 6));
        assert_eq!(
            summary[1],
            (
                "Refunds>Cards".into(),
                "Takes 5-7 days.\nSecond line.".into(),
                9,
                10
            )
        );
        assert_eq!(summary[2].0, "Refunds>Cards");
        assert!(summary[2].1.contains("# not a heading"));
        assert_eq!((summary[2].2, summary[2].3), (12, 16));
        assert_eq!(
            summary[3],
            ("Refunds>UPI".into(), "Instant.".into(), 18, 18)
        );
        assert_eq!(summary[4], ("Other".into(), "text".into(), 20, 20));
        assert_ne!(blocks[0].group, blocks[1].group);
    }

    #[test]
    fn hashtag_without_space_is_text() {
        let blocks = blocks_from_segments(markdown_segments("#hashtag here"));
        assert_eq!(blocks.len(), 1);
        assert!(blocks[0].heading.is_empty());
    }

    #[test]
    fn text_paragraphs() {
        let segs = text_segments("a\nb\n\n\nc\n");
        assert_eq!(
            segs,
            vec![
                Segment::Para {
                    text: "a\nb".into(),
                    start: 1,
                    end: 2
                },
                Segment::Para {
                    text: "c".into(),
                    start: 5,
                    end: 5
                }
            ]
        );
    }
}
