//! Property tests (proptest) for the parsers in the LLM client and planner that read bytes
//! from outside — `Retry-After` values, server-sent-event streams, streamed chunks, plan replies
//! and `$ref` paths: whatever arrives, they return a value or an error and never panic. Each
//! runs a bounded number of cases (a few seconds in all); `PROPTEST_CASES=N` runs more.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use memex::llm::retry_after;
use memex::llm::sse::{SseParser, StreamAssembler};
use memex::planner::{plan, refs};
use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::json;

const CAP: Duration = Duration::from_secs(90);

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Numbers as servers might write them, hostile ones included.
fn numberish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_map(|f| f.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<u128>().prop_map(|i| i.to_string()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("1e400".to_string()),
        "[0-9eE.+-]{0,30}",
        ".{0,40}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn retry_after_never_panics_and_never_exceeds_the_cap(value in numberish(), cap_ms in 0u64..200_000) {
        let cap = Duration::from_millis(cap_ms);
        if let Some(d) = retry_after::parse_retry_after(&value, cap) {
            prop_assert!(d <= cap);
        }
        if let Some(d) = retry_after::parse_seconds(&value, 1e-3, cap) {
            prop_assert!(d <= cap);
        }
    }

    #[test]
    fn retry_after_headers_of_any_bytes_never_panic(
        a in proptest::collection::vec(any::<u8>(), 0..60),
        b in proptest::collection::vec(any::<u8>(), 0..60),
    ) {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&a) {
            h.insert("retry-after", v);
        }
        if let Ok(v) = HeaderValue::from_bytes(&b) {
            h.insert("retry-after-ms", v);
        }
        if let Some(d) = retry_after::from_headers(&h, CAP) {
            prop_assert!(d <= CAP);
        }
    }

    #[test]
    fn sse_parser_takes_any_bytes_in_any_pieces(
        bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let mut start = 0;
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        for cut in cuts.into_iter().chain([bytes.len()]) {
            if p.push(&bytes[start..cut], &mut out).is_err() {
                return Ok(());
            }
            start = cut;
        }
        p.finish(&mut out);
        let mut a = StreamAssembler::new();
        let mut events = VecDeque::new();
        for data in &out {
            if a.on_data(data, &mut events).is_err() {
                break;
            }
        }
        let _ = a.end_of_input(&mut events);
    }

    #[test]
    fn sse_lines_split_anywhere_give_the_same_events(
        lines in proptest::collection::vec(
            prop_oneof![
                "data: [a-z{}\":, ]{0,20}".prop_map(|s| s + "\n"),
                Just(": keep-alive\n".to_string()),
                Just("\n".to_string()),
                Just("\r\n".to_string()),
                "(event|id|retry): [a-z0-9]{0,8}\r?\n",
            ],
            0..40,
        ),
        cut in any::<usize>(),
    ) {
        let text: String = lines.concat();
        let bytes = text.as_bytes();
        let whole = {
            let mut p = SseParser::new();
            let mut out = Vec::new();
            p.push(bytes, &mut out).unwrap();
            p.finish(&mut out);
            out
        };
        let cut = cut % (bytes.len() + 1);
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.push(&bytes[..cut], &mut out).unwrap();
        p.push(&bytes[cut..], &mut out).unwrap();
        p.finish(&mut out);
        prop_assert_eq!(whole, out);
    }

    #[test]
    fn streamed_chunks_of_any_json_never_panic(
        texts in proptest::collection::vec(".{0,80}", 0..6),
        index in proptest::option::of(any::<u32>()),
        args in ".{0,20}",
    ) {
        let mut a = StreamAssembler::new();
        let mut events = VecDeque::new();
        let mut chunks: Vec<String> = texts;
        chunks.push(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": index, "id": "c", "function": {"name": "f", "arguments": args}}]}}]}).to_string());
        chunks.push(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}).to_string());
        chunks.push("[DONE]".into());
        for c in &chunks {
            if a.on_data(c, &mut events).is_err() {
                break;
            }
        }
        let _ = a.end_of_input(&mut events);
    }

    #[test]
    fn ref_paths_of_any_text_never_panic(text in prop_oneof![
        ".{0,60}",
        "[0-9a-z_]{0,4}(\\.[0-9a-z_]{0,6}){0,6}",
        "[0-9]{1,3}\\.result(\\.[a-z0-9]{0,5}){0,5}",
    ]) {
        if let Ok(r) = refs::parse(&text) {
            prop_assert!(!r.step.is_empty());
        }
        let result = json!({"merchant_id": "MID001", "list": [1, {"a": [true]}], "n": 3});
        let results: HashMap<&str, &serde_json::Value> =
            [("1", &result), ("step_2", &result)].into_iter().collect();
        let args = json!({"x": {"$ref": text}, "y": [{"$ref": text}]});
        let _ = refs::resolve(&args, &results);
    }

    #[test]
    fn plan_replies_of_any_text_never_panic(text in prop_oneof![
        ".{0,300}",
        "\\{\"steps\": \\[.{0,200}\\]\\}",
    ]) {
        let _ = plan::parse_draft(&text);
    }
}
