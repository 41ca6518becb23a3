//! HTML to segments through html5ever's spec tokenizer: visible text only. Scripts, styles,
//! templates, comments and the `<head>` are dropped; raw-text elements (`<script>`, `<style>`,
//! `<title>`, `<textarea>`, …) are tokenized by the HTML spec's own rules; every named and
//! numeric character reference is decoded; block-level tags break paragraphs; `<h1>`–`<h6>`
//! become headings; whitespace collapses except inside `<pre>`.
//!
//! One pass over the input, constant work per character: linear in document size.

use std::cell::RefCell;

use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{
    BufferQueue, Tag, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};

use super::markdown::Segment;

const BLOCK_TAGS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "br",
    "dd",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "header",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "tbody",
    "td",
    "th",
    "thead",
    "tr",
    "ul",
    "body",
    "html",
    "details",
    "summary",
    "caption",
];

/// Elements whose content is never shown as text.
const HIDDEN_TAGS: &[&str] = &[
    "script", "style", "head", "template", "noscript", "svg", "iframe", "object", "canvas", "math",
    "noembed", "noframes", "title",
];

/// Most nested hidden elements tracked (deeper ones stay hidden with their ancestor), so that
/// matching an end tag costs a bounded time whatever the input.
const MAX_HIDDEN_DEPTH: usize = 256;

/// Elements allowed in `<head>`; any other start tag implies the head ended.
const HEAD_CONTENT: &[&str] = &[
    "base", "link", "meta", "noscript", "script", "style", "template", "title",
];

/// The tokenizer state each raw-text element switches to (what the tree builder would say).
fn raw_kind(name: &str) -> Option<TokenSinkResult<()>> {
    match name {
        "script" => Some(TokenSinkResult::RawData(RawKind::ScriptData)),
        "style" | "xmp" | "iframe" | "noembed" | "noframes" | "noscript" => {
            Some(TokenSinkResult::RawData(RawKind::Rawtext))
        }
        "title" | "textarea" => Some(TokenSinkResult::RawData(RawKind::Rcdata)),
        "plaintext" => Some(TokenSinkResult::Plaintext),
        _ => None,
    }
}

#[derive(Default)]
struct Builder {
    segments: Vec<Segment>,
    text: String,
    has_content: bool,
    pending_space: bool,
    start_line: usize,
    end_line: usize,
    heading: Option<u8>,
    pre_depth: usize,
    /// Open hidden elements, innermost last.
    hidden: Vec<String>,
}

impl Builder {
    fn push_text(&mut self, s: &str, mut line: usize) {
        let pre = self.pre_depth > 0;
        for ch in s.chars() {
            if ch.is_whitespace() {
                if !self.has_content {
                    // Leading whitespace is dropped.
                } else if pre {
                    self.text.push(ch);
                } else {
                    self.pending_space = true;
                }
            } else {
                if !self.has_content {
                    self.has_content = true;
                    self.start_line = line;
                }
                if self.pending_space {
                    if !self.text.ends_with(char::is_whitespace) {
                        self.text.push(' ');
                    }
                    self.pending_space = false;
                }
                self.text.push(ch);
                self.end_line = line;
            }
            if ch == '\n' {
                line += 1;
            }
        }
    }

    fn break_block(&mut self) {
        let text = self.text.trim().to_string();
        self.text.clear();
        self.has_content = false;
        self.pending_space = false;
        if text.is_empty() {
            return;
        }
        match self.heading {
            Some(level) => self.segments.push(Segment::Heading { level, text }),
            None => self.segments.push(Segment::Para {
                text,
                start: self.start_line,
                end: self.end_line.max(self.start_line),
            }),
        }
    }

    fn tag(&mut self, tag: &Tag) -> TokenSinkResult<()> {
        let name: &str = &tag.name;
        let start = tag.kind == TagKind::StartTag;
        if start && self.hidden.last().is_some_and(|h| h == "head") && !HEAD_CONTENT.contains(&name)
        {
            // The head ends where body content starts (the spec's implied `</head>`).
            self.hidden.pop();
        }
        if !self.hidden.is_empty() {
            if start
                && HIDDEN_TAGS.contains(&name)
                && !tag.self_closing
                && self.hidden.len() < MAX_HIDDEN_DEPTH
            {
                self.hidden.push(name.to_string());
            } else if !start {
                if let Some(pos) = self.hidden.iter().rposition(|h| h == name) {
                    self.hidden.truncate(pos);
                }
            }
            return if start {
                raw_kind(name).unwrap_or(TokenSinkResult::Continue)
            } else {
                TokenSinkResult::Continue
            };
        }
        if start && HIDDEN_TAGS.contains(&name) && !tag.self_closing {
            self.hidden.push(name.to_string());
            return raw_kind(name).unwrap_or(TokenSinkResult::Continue);
        }
        let level = match name {
            "h1" => Some(1),
            "h2" => Some(2),
            "h3" => Some(3),
            "h4" => Some(4),
            "h5" => Some(5),
            "h6" => Some(6),
            _ => None,
        };
        if let Some(level) = level {
            self.break_block();
            self.heading = if start { Some(level) } else { None };
        } else if BLOCK_TAGS.contains(&name) {
            self.break_block();
            if name == "pre" {
                self.pre_depth = if start {
                    self.pre_depth + 1
                } else {
                    self.pre_depth.saturating_sub(1)
                };
            }
        }
        if start {
            // Visible raw-text elements (`<textarea>`, `<xmp>`, `<plaintext>`) keep their text.
            raw_kind(name).unwrap_or(TokenSinkResult::Continue)
        } else {
            TokenSinkResult::Continue
        }
    }
}

struct Sink(RefCell<Builder>);

impl TokenSink for Sink {
    type Handle = ();

    fn process_token(&self, token: Token, line_number: u64) -> TokenSinkResult<()> {
        let mut b = self.0.borrow_mut();
        let line = usize::try_from(line_number).unwrap_or(usize::MAX);
        match token {
            Token::TagToken(tag) => b.tag(&tag),
            Token::CharacterTokens(text) => {
                if b.hidden.is_empty() {
                    // The tokenizer reports the line where a run of characters ends.
                    let newlines = text.bytes().filter(|&c| c == b'\n').count();
                    b.push_text(&text, line.saturating_sub(newlines).max(1));
                }
                TokenSinkResult::Continue
            }
            _ => TokenSinkResult::Continue,
        }
    }
}

/// Input pieces of at most this many bytes (a tendril holds < 4 GiB).
const PIECE: usize = 1 << 20;

/// Extracts the visible text of an HTML document as segments with source lines.
pub fn html_segments(html: &str) -> Vec<Segment> {
    let sink = Sink(RefCell::new(Builder {
        start_line: 1,
        end_line: 1,
        ..Builder::default()
    }));
    let tokenizer = Tokenizer::new(sink, TokenizerOpts::default());
    let input = BufferQueue::default();
    let mut rest = html;
    while !rest.is_empty() {
        let mut cut = rest.len().min(PIECE);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        input.push_back(StrTendril::from_slice(&rest[..cut]));
        rest = &rest[cut..];
        // We never ask the tokenizer to pause for scripts, so each feed drains the queue.
        let _ = tokenizer.feed(&input);
    }
    tokenizer.end();
    let mut b = tokenizer.sink.0.take();
    b.break_block();
    // The tokenizer reports a token's line after it looked ahead (a stray `<` before a line
    // break is reported on the next line): keep spans within the document.
    let lines = html.lines().count().max(1);
    for seg in &mut b.segments {
        if let Segment::Para { start, end, .. } = seg {
            *start = (*start).clamp(1, lines);
            *end = (*end).clamp(*start, lines);
        }
    }
    b.segments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_text_only_with_headings_and_lines() {
        let html = "<!DOCTYPE html>\n<html><head><title>T</title><style>p{color:red}</style></head>\n<body>\n<script>var x = '<p>no</p>';</script>\n<h1>Refunds &amp; returns</h1>\n<p>Cards take\n   5&ndash;7 days.</p>\n<!-- hidden -->\n<div>UPI is <b>instant</b>.</div>\n</body></html>";
        let segs = html_segments(html);
        assert_eq!(
            segs,
            vec![
                Segment::Heading {
                    level: 1,
                    text: "Refunds & returns".into()
                },
                Segment::Para {
                    text: "Cards take 5–7 days.".into(),
                    start: 6,
                    end: 7
                },
                Segment::Para {
                    text: "UPI is instant.".into(),
                    start: 9,
                    end: 9
                },
            ]
        );
    }

    #[test]
    fn broken_markup_does_not_panic() {
        for html in [
            "<",
            "<p",
            "<script>never closed",
            "a < b and c > d",
            "&#xZZ; &#99999999;",
            "<h2>x",
            "</p></p>",
        ] {
            let _ = html_segments(html);
        }
        let segs = html_segments("a < b");
        assert_eq!(
            segs,
            vec![Segment::Para {
                text: "a < b".into(),
                start: 1,
                end: 1
            }]
        );
    }

    #[test]
    fn spec_rules_for_attributes_entities_and_raw_text() {
        let html = "<p title=\"a > b\">Fee &frac12; &hearts; &#x20B9;5</p>\n<script>if (a < b) { s = \"</p><p>inside\"; }</script>\n<p>After</p>\n<textarea>typed &amp; kept</textarea>";
        let texts: Vec<String> = html_segments(html)
            .into_iter()
            .filter_map(|s| match s {
                Segment::Para { text, .. } => Some(text),
                Segment::Heading { .. } => None,
            })
            .collect();
        assert_eq!(texts[0], "Fee ½ ♥ ₹5");
        assert!(texts.iter().any(|t| t == "After"));
        assert!(texts.iter().any(|t| t == "typed & kept"));
        assert!(
            texts
                .iter()
                .all(|t| !t.contains("inside") && !t.contains("if (a")),
            "{texts:?}"
        );
    }
}
