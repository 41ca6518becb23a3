//! Property tests for the parsers that take outside bytes (HTML, Markdown, JSONL records):
//! they never panic, and every block's line span lies within the input's lines. Bounded to a
//! few seconds: a fixed number of cases over small inputs built from hostile fragments.

use memex::kb::chunk::{chunk_blocks, ChunkOptions};
use memex::kb::loader::{parse, FileKind};
use proptest::prelude::*;

/// Input lines, counted as the loaders count them (at least 1).
fn line_count(text: &str) -> usize {
    text.lines().count().max(1)
}

fn check(kind: FileKind, text: &str) -> Result<(), TestCaseError> {
    let (blocks, _warnings) = parse(kind, text);
    let lines = line_count(text);
    for b in &blocks {
        prop_assert!(
            b.line_start >= 1,
            "{kind:?} start {} in {text:?}",
            b.line_start
        );
        prop_assert!(
            b.line_start <= b.line_end && b.line_end <= lines,
            "{kind:?} span {}..={} outside {lines} lines of {text:?}",
            b.line_start,
            b.line_end
        );
        prop_assert!(!b.text.trim().is_empty());
    }
    let words = |t: &str| t.split_whitespace().count() + 2;
    let opts = ChunkOptions {
        max_tokens: 24,
        overlap_tokens: 4,
    };
    for c in chunk_blocks(&blocks, &opts, &words) {
        prop_assert!(c.line_start >= 1 && c.line_start <= c.line_end && c.line_end <= lines);
    }
    Ok(())
}

fn html_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("<p>".to_string()),
        Just("</p>".to_string()),
        Just("<pre>".to_string()),
        Just("</pre>".to_string()),
        Just("<script>".to_string()),
        Just("</script>".to_string()),
        Just("<style>a{}</style>".to_string()),
        Just("<h2>".to_string()),
        Just("</h2>".to_string()),
        Just("<svg><p>x</p>".to_string()),
        Just("</svg>".to_string()),
        Just("<head>".to_string()),
        Just("<a href=\"a > b\">".to_string()),
        Just("<!--".to_string()),
        Just("-->".to_string()),
        Just("<!DOCTYPE html>".to_string()),
        Just("&amp;&#x20B9;&#99999999;&bogus;&".to_string()),
        Just("<textarea>".to_string()),
        Just("<plaintext>".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("   ".to_string()),
        Just("<".to_string()),
        "[a-z .。]{0,12}",
        "\\PC{0,6}",
    ]
}

fn markdown_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("# ".to_string()),
        Just("###### ".to_string()),
        Just("\n===\n".to_string()),
        Just("\n---\n".to_string()),
        Just("```".to_string()),
        Just("````".to_string()),
        Just("~~~".to_string()),
        Just("    ".to_string()),
        Just("> ".to_string()),
        Just("- ".to_string()),
        Just("1. ".to_string()),
        Just("[link](http://x.test)".to_string()),
        Just("*em* **strong** `code`".to_string()),
        Just("| a | b |\n|---|---|\n| 1 | 2 |".to_string()),
        Just("<div>html</div>".to_string()),
        Just("[^1]: note".to_string()),
        Just("\n".to_string()),
        Just("\n\n".to_string()),
        Just("\r\n".to_string()),
        "[a-z .。]{0,12}",
        "\\PC{0,6}",
    ]
}

fn jsonl_line() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{0,10}".prop_map(|t| format!("{{\"text\": \"{t}\"}}")),
        "[a-z ]{0,10}".prop_map(|t| format!(
            "{{\"id\": 7, \"text\": \"{t}\", \"metadata\": {{\"k\": [1, null]}}}}"
        )),
        Just("{\"text\": 5}".to_string()),
        Just("{\"text\": \"\\ud800\"}".to_string()),
        Just("[1, 2".to_string()),
        Just(String::new()),
        "\\PC{0,20}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn html_never_panics_and_spans_stay_in_the_input(pieces in prop::collection::vec(html_piece(), 0..40)) {
        check(FileKind::Html, &pieces.concat())?;
    }

    #[test]
    fn markdown_never_panics_and_spans_stay_in_the_input(pieces in prop::collection::vec(markdown_piece(), 0..40)) {
        check(FileKind::Markdown, &pieces.concat())?;
        check(FileKind::Text, &pieces.concat())?;
    }

    #[test]
    fn jsonl_never_panics_and_records_keep_their_line(lines in prop::collection::vec(jsonl_line(), 0..20)) {
        let text = lines.join("\n");
        check(FileKind::Jsonl, &text)?;
        let (blocks, warnings) = parse(FileKind::Jsonl, &text);
        let nonblank = text.lines().filter(|l| !l.trim().is_empty()).count();
        prop_assert!(blocks.len() + warnings.len() <= nonblank);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        for kind in [FileKind::Html, FileKind::Markdown, FileKind::Text, FileKind::Jsonl] {
            check(kind, &text)?;
        }
    }
}
