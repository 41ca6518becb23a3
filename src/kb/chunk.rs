//! Structure-following chunking: blocks (paragraphs under a heading path) are packed into chunks
//! that stay within the model's token budget, heading context included.
//!
//! Pure functions over data; the token counter is passed in. Linear in the input: sentences
//! come from Unicode sentence boundaries (UAX #29, so `。` and other scripts split too), line
//! numbers are counted incrementally, and the heading path a chunk carries is capped.

use unicode_segmentation::UnicodeSegmentation;

/// Most bytes the heading path adds to a chunk; longer paths are cut with `…`.
pub const MAX_HEADING_PATH_BYTES: usize = 300;
/// Most tokens the heading path adds to a chunk's embedding text.
pub const MAX_HEADING_PATH_TOKENS: usize = 64;

/// A structural unit of a document: one paragraph (or list, table, code block, record) with
/// the headings above it.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// Headings enclosing this block, outermost first.
    pub heading: Vec<String>,
    /// The block's text.
    pub text: String,
    /// First source line (1-based).
    pub line_start: usize,
    /// Last source line (1-based, inclusive).
    pub line_end: usize,
    /// Blocks merge into one chunk only within the same group (a section, a JSONL record).
    pub group: usize,
    /// Per-record metadata (JSONL), kept with every chunk made from this block.
    pub metadata: Option<String>,
}

/// A chunk ready to embed and store.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Heading path, outermost first.
    pub heading: Vec<String>,
    /// The chunk's own text (without the heading context).
    pub text: String,
    /// First source line (1-based).
    pub line_start: usize,
    /// Last source line (1-based, inclusive).
    pub line_end: usize,
    /// Metadata carried from the block (JSONL records).
    pub metadata: Option<String>,
}

impl Chunk {
    /// The heading path joined with `" > "`.
    pub fn heading_text(&self) -> String {
        self.heading.join(" > ")
    }

    /// The text given to the embedder: heading context, a newline, then the chunk text.
    pub fn embedding_text(&self) -> String {
        embedding_text(&self.heading, &self.text)
    }
}

/// Heading context followed by `text`, as embedded.
pub fn embedding_text(heading: &[String], text: &str) -> String {
    if heading.is_empty() {
        text.to_string()
    } else {
        format!("{}\n{}", heading.join(" > "), text)
    }
}

/// Chunking parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkOptions {
    /// Upper bound on a chunk's embedding text in model tokens, `[CLS]`/`[SEP]` included.
    pub max_tokens: usize,
    /// Tokens of trailing text repeated at the start of the next chunk when a section is split.
    pub overlap_tokens: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        ChunkOptions {
            max_tokens: 256,
            overlap_tokens: 32,
        }
    }
}

impl ChunkOptions {
    /// A short string that changes whenever chunking would produce different chunks.
    pub fn fingerprint(&self) -> String {
        format!("chunk-v2:{}:{}", self.max_tokens, self.overlap_tokens)
    }
}

/// A piece of text with its line span and token count (without `[CLS]`/`[SEP]`).
#[derive(Debug, Clone)]
struct Unit {
    text: String,
    line_start: usize,
    line_end: usize,
    tokens: usize,
}

/// Splits `blocks` into chunks whose embedding text has at most `opts.max_tokens` tokens by
/// `count` (which counts `[CLS]`/`[SEP]`, like [`crate::embed::Embedder::count_tokens`]).
pub fn chunk_blocks(
    blocks: &[Block],
    opts: &ChunkOptions,
    count: &dyn Fn(&str) -> usize,
) -> Vec<Chunk> {
    let inner = |t: &str| count(t).saturating_sub(2);
    let mut out = Vec::new();
    let mut i = 0;
    while i < blocks.len() {
        let mut j = i + 1;
        while j < blocks.len()
            && blocks[j].group == blocks[i].group
            && blocks[j].heading == blocks[i].heading
        {
            j += 1;
        }
        chunk_group(&blocks[i..j], opts, &inner, count, &mut out);
        i = j;
    }
    out
}

fn chunk_group(
    blocks: &[Block],
    opts: &ChunkOptions,
    inner: &dyn Fn(&str) -> usize,
    count: &dyn Fn(&str) -> usize,
    out: &mut Vec<Chunk>,
) {
    let heading = capped_heading(&blocks[0].heading, inner);
    let metadata = blocks[0].metadata.clone();
    let prefix_tokens = if heading.is_empty() {
        0
    } else {
        inner(&heading.join(" > "))
    };
    // Budget for the body; at least a few tokens even under an absurdly long heading path.
    let budget = opts
        .max_tokens
        .saturating_sub(2 + prefix_tokens)
        .max(16.min(opts.max_tokens.saturating_sub(2)).max(1));

    let mut units: Vec<Unit> = Vec::new();
    for b in blocks {
        let text = b.text.trim();
        if text.is_empty() {
            continue;
        }
        // Every word is at least one token: a block with more words than the budget is split
        // without tokenizing it whole first.
        let tokens = if text.split_whitespace().nth(budget).is_some() {
            usize::MAX
        } else {
            inner(text)
        };
        if tokens <= budget {
            units.push(Unit {
                text: text.to_string(),
                line_start: b.line_start,
                line_end: b.line_end,
                tokens,
            });
        } else {
            split_long(text, b.line_start, budget, inner, &mut units);
        }
    }

    let mut current: Vec<Unit> = Vec::new();
    let mut used = 0usize;
    let mut fresh = 0usize; // units in `current` not carried over as overlap
    for unit in units {
        if !current.is_empty() && used + unit.tokens > budget && fresh > 0 {
            let carried = overlap_tail(&current, opts.overlap_tokens);
            emit(&heading, &metadata, &current, opts, count, out);
            current = carried;
            used = current.iter().map(|u| u.tokens).sum();
            fresh = 0;
            while !current.is_empty() && used + unit.tokens > budget {
                used -= current[0].tokens;
                current.remove(0);
            }
        }
        used += unit.tokens;
        fresh += 1;
        current.push(unit);
    }
    if fresh > 0 {
        emit(&heading, &metadata, &current, opts, count, out);
    }
}

/// Trailing units of `units` whose tokens sum to at most `overlap`.
fn overlap_tail(units: &[Unit], overlap: usize) -> Vec<Unit> {
    let mut taken = 0usize;
    let mut start = units.len();
    while start > 0 && taken + units[start - 1].tokens <= overlap {
        taken += units[start - 1].tokens;
        start -= 1;
    }
    if start == 0 {
        // Never repeat a whole chunk.
        start = 1.min(units.len());
    }
    units[start..].to_vec()
}

fn emit(
    heading: &[String],
    metadata: &Option<String>,
    units: &[Unit],
    opts: &ChunkOptions,
    count: &dyn Fn(&str) -> usize,
    out: &mut Vec<Chunk>,
) {
    let text = units
        .iter()
        .map(|u| u.text.as_str())
        .collect::<Vec<_>>()
        .join("\n\n");
    let chunk = Chunk {
        heading: heading.to_vec(),
        text,
        line_start: units.iter().map(|u| u.line_start).min().unwrap_or(1),
        line_end: units.iter().map(|u| u.line_end).max().unwrap_or(1),
        metadata: metadata.clone(),
    };
    // Token counts of pieces are additive for WordPiece after whitespace splitting, but check
    // the assembled text and halve the chunk if the estimate was off.
    if units.len() > 1 && count(&chunk.embedding_text()) > opts.max_tokens {
        let mid = units.len() / 2;
        emit(heading, metadata, &units[..mid], opts, count, out);
        emit(heading, metadata, &units[mid..], opts, count, out);
        return;
    }
    out.push(chunk);
}

/// The heading path as carried by chunks: unchanged when short, else one element holding the
/// joined path cut to [`MAX_HEADING_PATH_BYTES`] and [`MAX_HEADING_PATH_TOKENS`] with `…`.
fn capped_heading(heading: &[String], inner: &dyn Fn(&str) -> usize) -> Vec<String> {
    if heading.is_empty() {
        return Vec::new();
    }
    let joined = heading.join(" > ");
    if joined.len() <= MAX_HEADING_PATH_BYTES && inner(&joined) <= MAX_HEADING_PATH_TOKENS {
        return heading.to_vec();
    }
    let mut max = MAX_HEADING_PATH_BYTES.min(joined.len());
    loop {
        let cut = super::text::truncate_with_ellipsis(&joined, max);
        if inner(&cut) <= MAX_HEADING_PATH_TOKENS || max <= 16 {
            return vec![cut];
        }
        max /= 2;
    }
}

/// Splits an over-long block into sentence units, and over-long sentences into word windows.
/// Line numbers are counted incrementally, so the cost is linear in the block's length.
fn split_long(
    text: &str,
    first_line: usize,
    budget: usize,
    inner: &dyn Fn(&str) -> usize,
    units: &mut Vec<Unit>,
) {
    let mut line = first_line;
    let mut counted_to = 0usize; // bytes of `text` whose newlines are in `line`
    for (offset, sentence) in sentences(text) {
        line += text[counted_to..offset].matches('\n').count();
        counted_to = offset;
        let lines = sentence.matches('\n').count();
        let tokens = if sentence.split_whitespace().nth(budget).is_some() {
            usize::MAX
        } else {
            inner(sentence)
        };
        if tokens <= budget {
            units.push(Unit {
                text: sentence.to_string(),
                line_start: line,
                line_end: line + lines,
                tokens,
            });
            continue;
        }
        // Word windows: token counts of whitespace-separated words add up.
        let mut piece_words: Vec<&str> = Vec::new();
        let mut piece_tokens = 0usize;
        let flush = |words: &mut Vec<&str>, tokens: &mut usize, units: &mut Vec<Unit>| {
            if !words.is_empty() {
                units.push(Unit {
                    text: words.join(" "),
                    line_start: line,
                    line_end: line + lines,
                    tokens: *tokens,
                });
                words.clear();
                *tokens = 0;
            }
        };
        for word in sentence.split_whitespace() {
            let t = inner(word);
            if t > budget {
                flush(&mut piece_words, &mut piece_tokens, units);
                // A single "word" longer than the budget: cut it between grapheme clusters.
                let step_bytes = (word.len() * budget / t.max(1)).max(1);
                let mut piece = String::new();
                for g in word.graphemes(true) {
                    if !piece.is_empty() && piece.len() + g.len() > step_bytes {
                        let tokens = inner(&piece);
                        units.push(Unit {
                            text: std::mem::take(&mut piece),
                            line_start: line,
                            line_end: line + lines,
                            tokens,
                        });
                    }
                    piece.push_str(g);
                }
                if !piece.is_empty() {
                    let tokens = inner(&piece);
                    units.push(Unit {
                        text: piece,
                        line_start: line,
                        line_end: line + lines,
                        tokens,
                    });
                }
                continue;
            }
            if piece_tokens + t > budget {
                flush(&mut piece_words, &mut piece_tokens, units);
            }
            piece_words.push(word);
            piece_tokens += t;
        }
        flush(&mut piece_words, &mut piece_tokens, units);
    }
}

/// Sentences of `text` (trimmed, non-empty) with their byte offsets, at Unicode sentence
/// boundaries (UAX #29): after `.`, `!`, `?`, `。` and the like, and at line breaks.
fn sentences(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split_sentence_bound_indices()
        .filter_map(|(start, piece)| {
            let trimmed = piece.trim();
            if trimmed.is_empty() {
                None
            } else {
                let lead = piece.len() - piece.trim_start().len();
                Some((start + lead, trimmed))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per whitespace-separated word, plus [CLS] and [SEP].
    fn words(t: &str) -> usize {
        t.split_whitespace().count() + 2
    }

    fn block(heading: &[&str], text: &str, line: usize, group: usize) -> Block {
        Block {
            heading: heading.iter().map(|s| s.to_string()).collect(),
            text: text.to_string(),
            line_start: line,
            line_end: line + text.matches('\n').count(),
            group,
            metadata: None,
        }
    }

    #[test]
    fn small_section_becomes_one_chunk_with_span() {
        let blocks = vec![
            block(&["Fees"], "Card payments cost 2%.", 3, 0),
            block(&["Fees"], "UPI is free.", 5, 0),
        ];
        let chunks = chunk_blocks(&blocks, &ChunkOptions::default(), &words);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].text, "Card payments cost 2%.\n\nUPI is free.");
        assert_eq!((chunks[0].line_start, chunks[0].line_end), (3, 5));
        assert_eq!(
            chunks[0].embedding_text(),
            "Fees\nCard payments cost 2%.\n\nUPI is free."
        );
    }

    #[test]
    fn headings_and_groups_separate_chunks() {
        let blocks = vec![
            block(&["A"], "one", 1, 0),
            block(&["A", "B"], "two", 3, 1),
            block(&[], "three", 5, 2),
            block(&[], "four", 6, 3),
        ];
        let chunks = chunk_blocks(&blocks, &ChunkOptions::default(), &words);
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[1].heading_text(), "A > B");
    }

    #[test]
    fn every_chunk_fits_the_budget_heading_included() {
        let para: String = (0..40).map(|i| format!("word{i} ")).collect();
        let long_sentence: String = (0..500).map(|i| format!("w{i} ")).collect();
        let blocks: Vec<Block> = (0..30)
            .map(|i| {
                block(
                    &["Title", "Section with a long heading"],
                    &para,
                    i * 2 + 1,
                    0,
                )
            })
            .chain(std::iter::once(block(&["Title"], &long_sentence, 100, 1)))
            .collect();
        let opts = ChunkOptions {
            max_tokens: 64,
            overlap_tokens: 10,
        };
        let chunks = chunk_blocks(&blocks, &opts, &words);
        assert!(chunks.len() > 10);
        for c in &chunks {
            assert!(words(&c.embedding_text()) <= 64, "{}", c.embedding_text());
            assert!(!c.text.is_empty());
        }
        // All text survives: every word of the long sentence appears somewhere.
        let all: String = chunks
            .iter()
            .map(|c| c.text.clone())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(all.contains("w0 ") && all.contains("w499"));
    }

    #[test]
    fn overlap_repeats_trailing_sentences() {
        let text = "Alpha one two. Beta three four. Gamma five six. Delta seven eight.";
        let blocks = vec![block(&[], text, 1, 0)];
        let opts = ChunkOptions {
            max_tokens: 2 + 6,
            overlap_tokens: 3,
        };
        let chunks = chunk_blocks(&blocks, &opts, &words);
        assert!(chunks.len() >= 3);
        assert!(chunks[1].text.starts_with("Beta"), "{:?}", chunks);
        let no_overlap = chunk_blocks(
            &blocks,
            &ChunkOptions {
                max_tokens: 8,
                overlap_tokens: 0,
            },
            &words,
        );
        assert_eq!(no_overlap.len(), 2);
        assert!(no_overlap[1].text.starts_with("Gamma"));
    }

    #[test]
    fn cjk_splits_at_sentences_and_lines_are_tracked() {
        let text = "退款需要五到七天。银行处理后到账。\n第二行的句子。";
        let got: Vec<(usize, &str)> = sentences(text).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].1, "退款需要五到七天。");
        let one = |t: &str| t.chars().count() + 2;
        let opts = ChunkOptions {
            max_tokens: 14,
            overlap_tokens: 0,
        };
        let chunks = chunk_blocks(&[block(&[], text, 3, 0)], &opts, &one);
        assert!(chunks.iter().all(|c| one(&c.text) <= 14), "{chunks:?}");
        assert_eq!(chunks.last().map(|c| c.line_start), Some(4));
    }

    #[test]
    fn long_heading_paths_are_capped() {
        let long = "heading ".repeat(2000);
        let blocks = vec![
            block(&[&long, "Sub"], "body text here.", 1, 0),
            block(&[&long, "Sub"], "more body text.", 3, 0),
        ];
        let chunks = chunk_blocks(&blocks, &ChunkOptions::default(), &words);
        assert!(!chunks.is_empty());
        for c in &chunks {
            let h = c.heading_text();
            assert!(h.len() <= MAX_HEADING_PATH_BYTES, "{}", h.len());
            assert!(words(&h) - 2 <= MAX_HEADING_PATH_TOKENS);
            assert!(h.ends_with('…'));
        }
    }

    #[test]
    fn giant_word_is_cut() {
        let blob = "x".repeat(5000);
        let count = |t: &str| t.len() / 4 + 2;
        let chunks = chunk_blocks(&[block(&[], &blob, 1, 0)], &ChunkOptions::default(), &count);
        assert!(chunks.len() > 1);
        for c in &chunks {
            assert!(count(&c.embedding_text()) <= 256);
        }
    }
}
