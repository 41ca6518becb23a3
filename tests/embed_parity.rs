//! The embedder against sentence-transformers' own vectors, and its determinism rules.

use crate::support::model;

use memex::embed::{Embedder, EmbedderOptions, MiniLmEmbedder};
use model::cosine;

struct Reference {
    text: String,
    embedding: Vec<f32>,
    n_tokens: usize,
}

fn references() -> Vec<Reference> {
    let raw = include_str!("fixtures/public_reference.jsonl");
    raw.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("fixture line is JSON");
            Reference {
                text: v["text"].as_str().expect("text").to_string(),
                embedding: v["embedding"]
                    .as_array()
                    .expect("embedding")
                    .iter()
                    .map(|x| x.as_f64().expect("float") as f32)
                    .collect(),
                n_tokens: v["n_tokens"].as_u64().expect("n_tokens") as usize,
            }
        })
        .collect()
}

#[test]
fn matches_sentence_transformers_on_every_reference_text() {
    let refs = references();
    assert!(refs.len() >= 40);
    let emb = model::embedder();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let got = emb.embed_detailed(&texts).unwrap();
    let mut worst = (1.0f64, String::new());
    for (r, g) in refs.iter().zip(&got) {
        assert_eq!(g.vector.len(), 384);
        assert_eq!(g.n_tokens, r.n_tokens, "token count of {:?}", r.text);
        let c = cosine(&r.embedding, &g.vector);
        if c < worst.0 {
            worst = (c, r.text.clone());
        }
    }
    println!(
        "min cosine vs sentence-transformers: {:.7} ({:?})",
        worst.0, worst.1
    );
    assert!(worst.0 >= 0.9999, "min cosine {} on {:?}", worst.0, worst.1);
}

/// The candle path GPUs take (candle-transformers' `BertModel` + memex's pooling), run on the
/// CPU: parity with sentence-transformers on every text, padded batches (the attention mask)
/// equal to one-by-one passes (no mask), and the same vectors as the default CPU encoder.
#[test]
fn the_candle_transformers_path_gpus_use_matches_too() {
    let refs = references();
    let emb = MiniLmEmbedder::load(
        &model::model_dir(),
        EmbedderOptions {
            candle_forward: true,
            ..EmbedderOptions::default()
        },
    )
    .unwrap();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let got = emb.embed_detailed(&texts).unwrap();
    let mut worst = 1.0f64;
    for (r, g) in refs.iter().zip(&got) {
        assert_eq!(g.n_tokens, r.n_tokens, "token count of {:?}", r.text);
        let c = cosine(&r.embedding, &g.vector);
        worst = worst.min(c);
        assert!(c >= 0.9999, "candle path: cosine {c} on {:?}", r.text);
    }
    println!("candle-transformers path, min cosine vs sentence-transformers: {worst:.7}");
    let cpu = model::embedder();
    for (i, text) in texts.iter().enumerate().step_by(4) {
        let single = emb.embed_one(text).unwrap();
        let c = cosine(&single, &got[i].vector);
        assert!(
            c >= 0.99999,
            "candle path, padded batch vs alone: {c} on {text:?}"
        );
        let c = cosine(&cpu.embed_one(text).unwrap(), &single);
        assert!(c >= 0.9999, "candle path vs CPU encoder: {c} on {text:?}");
    }
}

#[test]
fn batch_equals_one_by_one() {
    let refs = references();
    let emb = model::embedder();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let batched = emb.embed(&texts).unwrap();
    for (text, b) in texts.iter().zip(&batched) {
        let single = emb.embed_one(text).unwrap();
        let max_diff = single
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            max_diff <= 1e-5,
            "{text:?}: batch vs single differ by {max_diff}"
        );
    }
}

#[test]
fn order_is_preserved_whatever_the_batching() {
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let small = MiniLmEmbedder::load(
        &model::model_dir(),
        EmbedderOptions {
            max_batch: 3,
            max_batch_tokens: 300,
            threads: Some(1),
            ..EmbedderOptions::default()
        },
    )
    .unwrap();
    let a = small.embed(&texts).unwrap();
    let b = model::embedder().embed(&texts).unwrap();
    for ((x, y), t) in a.iter().zip(&b).zip(&texts) {
        assert!(cosine(x, y) > 0.99999, "{t:?} moved or changed");
    }
}

/// Several callers embedding at once on the shared thread pool (as `memex serve` and parallel
/// tests do): a thread waiting inside one batch may run another batch's work, and every caller
/// still gets the vectors it would get alone, without a panic.
#[test]
fn concurrent_callers_get_the_same_vectors() {
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let emb = model::embedder();
    let expected = emb.embed(&texts).unwrap();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..3 {
                        let got = emb.embed(&texts).expect("embeds");
                        for ((x, y), t) in got.iter().zip(&expected).zip(&texts) {
                            let diff = x
                                .iter()
                                .zip(y)
                                .map(|(a, b)| (a - b).abs())
                                .fold(0f32, f32::max);
                            assert!(diff <= 1e-6, "{t:?}: concurrent result differs by {diff}");
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("no caller panics");
        }
    });
}

#[test]
fn same_input_same_bytes() {
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let emb = model::embedder();
    let a = emb.embed(&texts).unwrap();
    let b = emb.embed(&texts).unwrap();
    let bits =
        |v: &Vec<Vec<f32>>| -> Vec<u32> { v.iter().flatten().map(|x| x.to_bits()).collect() };
    assert_eq!(bits(&a), bits(&b));
}

#[test]
fn long_texts_are_truncated_at_256_tokens() {
    let emb = model::embedder();
    // "bank" is one token: [CLS] + 300 words + [SEP] is 302 tokens.
    let base = vec!["bank"; 300].join(" ");
    let longer = format!("{base} settlement chargeback dispute gateway error webhook");
    let counted = emb.embed_detailed(&[&base, &longer]).unwrap();
    assert_eq!(counted[0].n_tokens, 302);
    assert!(counted[1].n_tokens > 302);
    // Everything past token 254 of the content is cut, so both give the same vector.
    let diff = counted[0]
        .vector
        .iter()
        .zip(&counted[1].vector)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff <= 1e-6, "truncated texts differ by {diff}");
    // And a text of exactly 254 content words equals them too.
    let exact = vec!["bank"; 254].join(" ");
    let e = emb.embed_one(&exact).unwrap();
    assert!(cosine(&e, &counted[0].vector) > 0.999_999);
    assert_eq!(emb.count_tokens(&base).unwrap(), 302);
}

#[test]
fn empty_and_whitespace_give_the_cls_sep_embedding() {
    let emb = model::embedder();
    let out = emb.embed_detailed(&["", "   ", "\n\t "]).unwrap();
    for e in &out {
        assert_eq!(e.n_tokens, 2);
        let norm: f32 = e.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert!(e.vector.iter().all(|x| x.is_finite()));
    }
    assert_eq!(out[0].vector, out[1].vector);
    assert_eq!(out[0].vector, out[2].vector);
    assert!(emb.embed(&[]).unwrap().is_empty());
}

#[test]
fn vectors_are_unit_length_and_384_wide() {
    let emb = model::embedder();
    assert_eq!(emb.dim(), 384);
    let v = emb.embed_one("settlement delayed for MID001").unwrap();
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
}
