//! Markdown and plain text to [`Block`]s. Markdown goes through `pulldown-cmark` (CommonMark:
//! ATX and setext headings, indented and fenced code with fences matched by length, YAML front
//! matter skipped); link, emphasis and other inline syntax is stripped from the text, and each
//! top-level block keeps its source line span (from the parser's byte offsets).

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

use super::chunk::Block;
pub use super::text::truncate_with_ellipsis;
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

/// Most bytes of one heading kept in the heading path; a longer heading is cut (with `…`) and
/// its full text is kept as a block of its own, so nothing is lost and no chunk repeats it.
pub const MAX_HEADING_BYTES: usize = 200;

/// Turns segments into blocks: each heading opens a new group and updates the heading path.
pub fn blocks_from_segments(segments: Vec<Segment>) -> Vec<Block> {
    let mut stack: Vec<(u8, String)> = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut group = 0usize;
    let mut out = Vec::new();
    let mut last_line = 1usize;
    for seg in segments {
        match seg {
            Segment::Heading { level, text } => {
                while stack.last().is_some_and(|(l, _)| *l >= level) {
                    stack.pop();
                }
                let short = truncate_with_ellipsis(&text, MAX_HEADING_BYTES);
                let long = short.len() < text.len();
                stack.push((level, short));
                path = stack.iter().map(|(_, t)| t.clone()).collect();
                group += 1;
                if long {
                    out.push(Block {
                        heading: path.clone(),
                        text,
                        line_start: last_line,
                        line_end: last_line,
                        group,
                        metadata: None,
                    });
                }
            }
            Segment::Para { text, start, end } => {
                last_line = end;
                if text.trim().is_empty() {
                    continue;
                }
                out.push(Block {
                    heading: path.clone(),
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

/// Byte offsets of line starts, for offset → 1-based line lookups.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Lines {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines(starts)
    }

    /// The 1-based line holding byte `offset`.
    fn of(&self, offset: usize) -> usize {
        self.0.partition_point(|&s| s <= offset).max(1)
    }
}

fn level_of(level: HeadingLevel) -> u8 {
    match level {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}

/// Appends a line break unless the text is empty or already ends with one.
fn newline(buf: &mut String) {
    if !buf.is_empty() && !buf.ends_with('\n') {
        buf.push('\n');
    }
}

/// Parses Markdown into segments: one per heading and per top-level block.
pub fn markdown_segments(text: &str) -> Vec<Segment> {
    let lines = Lines::new(text);
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_YAML_STYLE_METADATA_BLOCKS;
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut depth = 0usize; // open block containers
    let mut block_start = 0usize;
    let mut heading: Option<u8> = None;
    let mut in_metadata = false;
    for (event, range) in Parser::new_ext(text, options).into_offset_iter() {
        match event {
            Event::Start(tag) => {
                let is_block = matches!(
                    tag,
                    Tag::Paragraph
                        | Tag::Heading { .. }
                        | Tag::BlockQuote(_)
                        | Tag::CodeBlock(_)
                        | Tag::HtmlBlock
                        | Tag::List(_)
                        | Tag::Item
                        | Tag::FootnoteDefinition(_)
                        | Tag::DefinitionList
                        | Tag::DefinitionListTitle
                        | Tag::DefinitionListDefinition
                        | Tag::Table(_)
                        | Tag::TableHead
                        | Tag::TableRow
                        | Tag::MetadataBlock(_)
                );
                match tag {
                    Tag::Heading { level, .. } if depth == 0 => heading = Some(level_of(level)),
                    Tag::MetadataBlock(_) => in_metadata = true,
                    Tag::TableCell if !buf.is_empty() && !buf.ends_with(['\n', ' ']) => {
                        buf.push_str(" | ");
                    }
                    _ => {}
                }
                if is_block {
                    if depth == 0 {
                        block_start = range.start;
                        buf.clear();
                    } else {
                        newline(&mut buf);
                    }
                    depth += 1;
                }
            }
            Event::End(end) => {
                let is_block = matches!(
                    end,
                    TagEnd::Paragraph
                        | TagEnd::Heading(_)
                        | TagEnd::BlockQuote(_)
                        | TagEnd::CodeBlock
                        | TagEnd::HtmlBlock
                        | TagEnd::List(_)
                        | TagEnd::Item
                        | TagEnd::FootnoteDefinition
                        | TagEnd::DefinitionList
                        | TagEnd::DefinitionListTitle
                        | TagEnd::DefinitionListDefinition
                        | TagEnd::Table
                        | TagEnd::TableHead
                        | TagEnd::TableRow
                        | TagEnd::MetadataBlock(_)
                );
                if matches!(end, TagEnd::MetadataBlock(_)) {
                    in_metadata = false;
                    buf.clear();
                }
                if is_block {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        let body = buf.trim();
                        if let Some(level) = heading.take() {
                            if !body.is_empty() {
                                out.push(Segment::Heading {
                                    level,
                                    text: body.to_string(),
                                });
                            }
                        } else if !body.is_empty() {
                            let last = range.end.max(range.start + 1) - 1;
                            out.push(Segment::Para {
                                text: body.to_string(),
                                start: lines.of(block_start),
                                end: lines.of(last.min(text.len().saturating_sub(1))),
                            });
                        }
                        buf.clear();
                    }
                }
            }
            Event::Text(t) | Event::Code(t) | Event::InlineMath(t) | Event::DisplayMath(t) => {
                if !in_metadata {
                    buf.push_str(&t);
                }
            }
            Event::SoftBreak | Event::HardBreak => {
                if heading.is_some() {
                    buf.push(' ');
                } else {
                    buf.push('\n');
                }
            }
            Event::Rule => {}
            Event::TaskListMarker(done) => buf.push_str(if done { "[x] " } else { "[ ] " }),
            Event::Html(_) | Event::InlineHtml(_) | Event::FootnoteReference(_) => {}
        }
    }
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

    fn summary(md: &str) -> Vec<(String, String, usize, usize)> {
        blocks_from_segments(markdown_segments(md))
            .iter()
            .map(|b| {
                (
                    b.heading.join(">"),
                    b.text.clone(),
                    b.line_start,
                    b.line_end,
                )
            })
            .collect()
    }

    #[test]
    fn headings_build_paths_and_spans() {
        let md = "---\ntitle: x\n---\n# Refunds\n\nIntro line.\n\n## Cards\nTakes 5-7 days.\nSecond line.\n\n```\n# not a heading\n\ncode\n```\n## UPI\nInstant.\n# Other ###\ntext";
        let summary = summary(md);
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
    }

    #[test]
    fn hashtag_without_space_is_text() {
        let blocks = blocks_from_segments(markdown_segments("#hashtag here"));
        assert_eq!(blocks.len(), 1);
        assert!(blocks[0].heading.is_empty());
    }

    #[test]
    fn setext_indented_code_nested_fences_and_inline_syntax() {
        let md = "Fees\n====\n\nSee [the **pricing** page](https://x.test/p) for *all* `fees`.\n\n    indented code\n    more code\n\nRefunds\n-------\n\n````md\n```\n# inner fence, not a heading\n```\n````\n\n> quoted > text\n";
        let summary = summary(md);
        assert_eq!(
            summary[0],
            (
                "Fees".into(),
                "See the pricing page for all fees.".into(),
                4,
                4
            )
        );
        assert_eq!(
            summary[1],
            ("Fees".into(), "indented code\nmore code".into(), 6, 7)
        );
        assert_eq!(summary[2].0, "Fees>Refunds");
        assert!(summary[2].1.contains("# inner fence, not a heading"));
        assert!(summary[2].1.starts_with("```"), "{:?}", summary[2]);
        assert_eq!((summary[2].2, summary[2].3), (12, 16));
        assert_eq!(
            summary[3],
            ("Fees>Refunds".into(), "quoted > text".into(), 18, 18)
        );
    }

    #[test]
    fn long_headings_are_cut_in_the_path_but_kept_as_text() {
        let long = "word ".repeat(1000);
        let md = format!("# {long}\n\nbody one\n\nbody two\n");
        let blocks = blocks_from_segments(markdown_segments(&md));
        assert_eq!(blocks.len(), 3);
        for b in &blocks {
            assert!(b.heading[0].len() <= MAX_HEADING_BYTES);
            assert!(b.heading[0].ends_with('…'));
        }
        assert_eq!(blocks[0].text, long.trim());
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
