//! The CPU encoder's weight precisions and kernels: f16 (the default) against
//! sentence-transformers in every batching, int8 against f32, batch against one-by-one per
//! precision, and the forced scalar kernel against the SIMD one.

use crate::support::model;

use memex::embed::{Embedder, EmbedderOptions, Kernel, KernelChoice, MiniLmEmbedder, Precision};
use model::cosine;

struct Reference {
    text: String,
    embedding: Vec<f32>,
}

fn references() -> Vec<Reference> {
    include_str!("fixtures/public_reference.jsonl")
        .lines()
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
            }
        })
        .collect()
}

fn load(
    precision: Precision,
    kernel: KernelChoice,
    tweak: impl Fn(&mut EmbedderOptions),
) -> MiniLmEmbedder {
    let mut opts = EmbedderOptions {
        precision,
        kernel,
        ..EmbedderOptions::default()
    };
    tweak(&mut opts);
    MiniLmEmbedder::load(&model::model_dir(), opts).expect("the real model loads")
}

fn texts(refs: &[Reference]) -> Vec<&str> {
    refs.iter().map(|r| r.text.as_str()).collect()
}

fn one_by_one(emb: &MiniLmEmbedder, texts: &[&str]) -> Vec<Vec<f32>> {
    texts.iter().map(|t| emb.embed_one(t).unwrap()).collect()
}

/// The smallest cosine between paired vectors, with the text it happens on.
fn worst<'a>(a: &[Vec<f32>], b: &[Vec<f32>], texts: &[&'a str]) -> (f64, &'a str) {
    a.iter()
        .zip(b)
        .zip(texts)
        .map(|((x, y), t)| (cosine(x, y), *t))
        .fold((1.0, ""), |w, c| if c.0 < w.0 { c } else { w })
}

#[test]
fn f16_is_the_default() {
    assert_eq!(EmbedderOptions::default().precision, Precision::F16);
    let emb = model::embedder();
    assert_eq!(emb.precision(), Precision::F16);
    assert_eq!(emb.kernel(), Some(Kernel::resolve(KernelChoice::Auto)));
    // Half the bytes of the f32 path per forward pass.
    let f32_bytes = load(Precision::F32, KernelChoice::Auto, |_| {})
        .weight_bytes_per_pass()
        .unwrap();
    assert_eq!(emb.weight_bytes_per_pass().unwrap() * 2, f32_bytes);
}

#[test]
fn f16_and_f32_match_sentence_transformers_in_every_batching() {
    let refs = references();
    assert!(refs.len() >= 40);
    let want: Vec<Vec<f32>> = refs.iter().map(|r| r.embedding.clone()).collect();
    let texts = texts(&refs);
    for precision in [Precision::F16, Precision::F32] {
        let all = load(precision, KernelChoice::Auto, |_| {});
        let small = load(precision, KernelChoice::Auto, |o| {
            o.max_batch = 3;
            o.max_batch_tokens = 300;
            o.threads = Some(1);
        });
        let scalar = load(precision, KernelChoice::Scalar, |_| {});
        let runs = [
            ("one batch", all.embed(&texts).unwrap()),
            ("one by one", one_by_one(&all, &texts)),
            ("batches of 3, 1 thread", small.embed(&texts).unwrap()),
            ("scalar kernel", scalar.embed(&texts).unwrap()),
        ];
        for (how, got) in &runs {
            let (c, t) = worst(got, &want, &texts);
            println!("{precision} {how}: min cosine vs sentence-transformers {c:.7} ({t:?})");
            assert!(c >= 0.9999, "{precision} {how}: cosine {c} on {t:?}");
        }
    }
}

#[test]
fn int8_stays_close_to_f32_on_every_reference_text() {
    let refs = references();
    let texts = texts(&refs);
    let exact = load(Precision::F32, KernelChoice::Auto, |_| {})
        .embed(&texts)
        .unwrap();
    let int8 = load(Precision::Int8, KernelChoice::Auto, |_| {});
    assert_eq!(int8.precision(), Precision::Int8);
    let got = int8.embed(&texts).unwrap();
    let (c, t) = worst(&got, &exact, &texts);
    let want: Vec<Vec<f32>> = refs.iter().map(|r| r.embedding.clone()).collect();
    let (st, st_t) = worst(&got, &want, &texts);
    println!("int8: min cosine vs f32 {c:.5} ({t:?}); vs sentence-transformers {st:.5} ({st_t:?})");
    assert!(c >= 0.99, "int8 vs f32: cosine {c} on {t:?}");
    assert!(
        c < 0.999_999,
        "int8 gave the f32 vectors: is it quantizing at all?"
    );
    // A quarter of the f32 bytes (plus one scale per output channel).
    let bytes = int8.weight_bytes_per_pass().unwrap() as f64;
    let f32_bytes = load(Precision::F32, KernelChoice::Auto, |_| {})
        .weight_bytes_per_pass()
        .unwrap() as f64;
    assert!(bytes / f32_bytes < 0.26, "{bytes} vs {f32_bytes}");
}

#[test]
fn batch_equals_one_by_one_per_precision() {
    let refs = references();
    let texts = texts(&refs);
    for precision in [Precision::F32, Precision::F16, Precision::Int8] {
        let emb = load(precision, KernelChoice::Auto, |_| {});
        let batched = emb.embed(&texts).unwrap();
        for (text, (b, s)) in texts
            .iter()
            .zip(batched.iter().zip(one_by_one(&emb, &texts)))
        {
            let diff = b
                .iter()
                .zip(&s)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                diff <= 1e-5,
                "{precision} {text:?}: batch vs single differ by {diff}"
            );
        }
    }
}

#[test]
fn forced_scalar_kernel_agrees_with_simd_per_precision() {
    let refs = references();
    let texts = texts(&refs);
    // Every SIMD tier this CPU has: AVX2 (the packed int8 kernel included), and the AVX-512
    // tier (panels for f32/f16, VNNI for int8) where present.
    let mut choices = vec![KernelChoice::Avx2];
    if Kernel::resolve(KernelChoice::Auto) != Kernel::resolve(KernelChoice::Avx2) {
        choices.push(KernelChoice::Auto);
    }
    for precision in [Precision::F32, Precision::F16, Precision::Int8] {
        let scalar = load(precision, KernelChoice::Scalar, |_| {});
        assert_eq!(scalar.kernel(), Some(Kernel::Scalar));
        let a = scalar.embed(&texts).unwrap();
        for &choice in &choices {
            let simd = load(precision, choice, |_| {});
            assert_eq!(simd.kernel(), Some(Kernel::resolve(choice)));
            let b = simd.embed(&texts).unwrap();
            let (c, t) = worst(&a, &b, &texts);
            println!(
                "{precision}: scalar vs {}: min cosine {c:.7} ({t:?})",
                simd.kernel().unwrap()
            );
            // f32 and f16 differ only in summation order; int8 may also round an activation
            // the other way where the f32 activations differ in the last bit.
            let bound = if precision == Precision::Int8 {
                0.999
            } else {
                0.99999
            };
            assert!(
                c >= bound,
                "{precision}: scalar vs {choice:?} cosine {c} on {t:?}"
            );
        }
    }
}

/// The AVX2 and AVX-512 tiers run the same panel kernel on 256- and 512-bit registers, with the
/// same fused multiply-adds in the same order, and the same attention, GELU and LayerNorm: for
/// `f32` and `f16` a text gets the same bits on either tier, alone or in a batch.
#[test]
fn avx2_and_avx512_tiers_give_the_same_bits() {
    if Kernel::resolve(KernelChoice::Auto) == Kernel::resolve(KernelChoice::Avx2) {
        println!("this CPU has no AVX-512 tier: nothing to compare");
        return;
    }
    let refs = references();
    let texts = texts(&refs);
    for precision in [Precision::F32, Precision::F16] {
        let avx2 = load(precision, KernelChoice::Avx2, |_| {});
        let wide = load(precision, KernelChoice::Auto, |_| {});
        assert_eq!(avx2.kernel(), Some(Kernel::Avx2F16c));
        assert_eq!(wide.kernel(), Some(Kernel::Avx512Vnni));
        assert_eq!(
            avx2.embed(&texts).unwrap(),
            wide.embed(&texts).unwrap(),
            "{precision}: the tiers differ"
        );
        let first = *texts.first().expect("reference texts");
        assert_eq!(
            avx2.embed_one(first).unwrap(),
            wide.embed_one(first).unwrap()
        );
    }
}
