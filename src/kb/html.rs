//! HTML to segments: visible text only. Scripts, styles, templates, comments and the `<head>`
//! are dropped; block-level tags break paragraphs; `<h1>`–`<h6>` become headings; entities are
//! decoded; whitespace collapses except inside `<pre>`.

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
const HIDDEN_TAGS: &[&str] = &[
    "script", "style", "head", "template", "noscript", "svg", "iframe", "object", "canvas",
];

struct Builder {
    segments: Vec<Segment>,
    text: String,
    start_line: usize,
    end_line: usize,
    heading: Option<u8>,
}

impl Builder {
    fn push_text(&mut self, s: &str, line: usize, pre: bool) {
        for ch in s.chars() {
            if !pre && ch.is_whitespace() {
                if !self.text.is_empty() && !self.text.ends_with([' ', '\n']) {
                    self.text.push(' ');
                }
                continue;
            }
            if self.text.trim().is_empty() && !ch.is_whitespace() {
                self.start_line = line;
                self.text.clear();
            }
            self.text.push(ch);
            self.end_line = line;
        }
    }

    fn break_block(&mut self) {
        let text = self.text.trim().to_string();
        self.text.clear();
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
}

/// Decodes the common named entities and numeric character references.
pub fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let end = tail.find(';').filter(|&e| e <= 12);
        let decoded = end.and_then(|e| {
            let name = &tail[1..e];
            let ch = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                "ndash" => Some('–'),
                "mdash" => Some('—'),
                "rsquo" => Some('’'),
                "lsquo" => Some('‘'),
                "hellip" => Some('…'),
                "rarr" => Some('→'),
                "copy" => Some('©'),
                "reg" => Some('®'),
                "trade" => Some('™'),
                "euro" => Some('€'),
                "pound" => Some('£'),
                "rupee" | "inr" => Some('₹'),
                _ if name.starts_with("#x") || name.starts_with("#X") => {
                    u32::from_str_radix(&name[2..], 16)
                        .ok()
                        .and_then(char::from_u32)
                }
                _ if name.starts_with('#') => name[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            };
            ch.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &tail[e + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Extracts the visible text of an HTML document as segments with source lines.
pub fn html_segments(html: &str) -> Vec<Segment> {
    let mut b = Builder {
        segments: Vec::new(),
        text: String::new(),
        start_line: 1,
        end_line: 1,
        heading: None,
    };
    let bytes = html.as_bytes();
    let mut i = 0usize;
    let mut line = 1usize;
    let mut pre_depth = 0usize;
    while i < bytes.len() {
        if bytes[i] == b'<' {
            // Comment.
            if html[i..].starts_with("<!--") {
                let end = html[i + 4..]
                    .find("-->")
                    .map_or(html.len(), |e| i + 4 + e + 3);
                line += html[i..end].matches('\n').count();
                i = end;
                continue;
            }
            let lt = i;
            let (tag, tag_end) = match html[i..].find('>') {
                Some(e) => (&html[i + 1..i + e], i + e + 1),
                None => (&html[i + 1..], html.len()),
            };
            let closing = tag.starts_with('/');
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_ascii_lowercase();
            if name.is_empty() && !tag.starts_with('!') && !tag.starts_with('?') {
                // A stray `<` is text.
                b.push_text("<", line, pre_depth > 0);
                i = lt + 1;
                continue;
            }
            line += tag.matches('\n').count();
            i = tag_end;
            if name.is_empty() {
                // `<!DOCTYPE`, `<?xml`: not text we show.
                continue;
            }
            if !closing && HIDDEN_TAGS.contains(&name.as_str()) && !tag.ends_with('/') {
                // Skip to the matching close tag.
                let close = format!("</{name}");
                let lower = html[i..].to_ascii_lowercase();
                let end = match lower.find(&close) {
                    Some(e) => {
                        let after = i + e;
                        html[after..]
                            .find('>')
                            .map_or(html.len(), |g| after + g + 1)
                    }
                    None => html.len(),
                };
                line += html[i..end].matches('\n').count();
                i = end;
                continue;
            }
            let level = match name.as_str() {
                "h1" => Some(1),
                "h2" => Some(2),
                "h3" => Some(3),
                "h4" => Some(4),
                "h5" => Some(5),
                "h6" => Some(6),
                _ => None,
            };
            if let Some(level) = level {
                b.break_block();
                b.heading = if closing { None } else { Some(level) };
            } else if BLOCK_TAGS.contains(&name.as_str()) {
                b.break_block();
                if name == "pre" {
                    pre_depth = if closing {
                        pre_depth.saturating_sub(1)
                    } else {
                        pre_depth + 1
                    };
                }
            } else if !b.text.is_empty() && !b.text.ends_with(' ') && (name == "td" || name == "th")
            {
                b.text.push(' ');
            }
            continue;
        }
        let next = html[i..].find('<').map_or(html.len(), |e| i + e);
        let raw = &html[i..next];
        let decoded = decode_entities(raw);
        // Track lines across the raw text while appending.
        let mut l = line;
        for piece in decoded.split_inclusive('\n') {
            b.push_text(piece, l, pre_depth > 0);
            if piece.ends_with('\n') {
                l += 1;
            }
        }
        line += raw.matches('\n').count();
        i = next;
    }
    b.break_block();
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
}
