//! The embedder at each weight precision in one process, with the machine's own limits measured
//! in the same run (`benches/compare_precision.py` runs this next to sentence-transformers).
//!
//! ```sh
//! cargo run --release --example precision_bench -- --threads 2 --texts 512 --repeats 3
//! ```
//!
//! Prints one JSON object: per precision the 20-token query latency (p50/p99 over 300 calls),
//! bulk throughput at batch 32 over the first N texts of `data/corpus/texts.jsonl` (best of R),
//! cold start (spawning `memex embed` until its first vector, median of 5) and the bytes of
//! weights one pass streams; plus the measured memory bandwidth (reading a 1 GiB buffer on all
//! threads), f32 gemm peak (the `gemm` crate at the encoder's FFN shape, all threads) and the
//! CPU's arithmetic peaks (f32 FMA on 256- and 512-bit vectors, `vpdpbusd` where it has VNNI,
//! the AVX2 int8 step). Where the CPU has the AVX-512 tier, every precision also runs forced to
//! the AVX2 tier (`f32_avx2`, `f16_avx2`, `int8_avx2`). `--only NAME` runs one of them, for
//! profiling.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use memex::embed::{Embedder, EmbedderOptions, Kernel, KernelChoice, MiniLmEmbedder, Precision};
use rayon::prelude::*;

/// The 14-word query the agent embeds once per turn: 20 tokens with `[CLS]`/`[SEP]`.
const QUERY: &str = "why was my settlement for pay_ABC123 delayed after the customer paid by UPI";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_dir() -> PathBuf {
    std::env::var_os("MEMEX_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/all-MiniLM-L6-v2"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// GB/s reading a buffer far larger than every cache, on the pool's threads.
fn bandwidth(pool: &rayon::ThreadPool) -> f64 {
    let buf = vec![1u64; 1 << 27]; // 1 GiB
    let mut best = 0f64;
    for _ in 0..5 {
        let t0 = Instant::now();
        let s: u64 = pool.install(|| {
            buf.par_chunks(1 << 16)
                .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
                .sum()
        });
        let dt = t0.elapsed().as_secs_f64();
        assert!(s > 0);
        best = best.max((buf.len() * 8) as f64 / dt / 1e9);
    }
    best
}

/// GFLOP/s of f32 gemm at the FFN shape (768 tokens × 384 → 1536), on `threads` threads.
fn gemm_peak(threads: usize) -> f64 {
    let (m, n, k) = (768, 1536, 384);
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0f32; m * n];
    let mut best = 0f64;
    for _ in 0..5 {
        let t0 = Instant::now();
        let reps = 10;
        for _ in 0..reps {
            // SAFETY: every buffer is sized for the (m, k) · (k, n) → (m, n) row-major shapes.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                );
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        best = best.max(2.0 * (m * n * k * reps) as f64 / dt / 1e9);
    }
    best
}

/// The CPU's arithmetic peaks, measured on the pool's threads with register-only loops (no
/// memory traffic): f32 FMA GFLOP/s on 256-bit (AVX2) and 512-bit (AVX-512F) vectors,
/// `vpdpbusd` G multiply-adds/s (AVX-512 VNNI) and the AVX2 int8 step's G multiply-adds/s.
/// `None` where the CPU lacks the instructions.
fn arithmetic_peaks(pool: &rayon::ThreadPool) -> [Option<f64>; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // Twelve independent chains: enough to hide the FMA latency on two pipes, and few
        // enough that every chain stays in a register (AVX2 has sixteen; with twenty 512-bit
        // chains rustc keeps some on the stack and the loop measures the stores instead).
        const CHAINS: usize = 12;
        const ITERS: usize = 2_000_000;

        #[target_feature(enable = "avx512f")]
        unsafe fn fma512() -> f32 {
            let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
            let mut acc = [_mm512_set1_ps(1.0); CHAINS];
            for _ in 0..ITERS {
                for v in acc.iter_mut() {
                    *v = _mm512_fmadd_ps(*v, a, b);
                }
            }
            acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
        }

        #[target_feature(enable = "avx2,fma")]
        unsafe fn fma256() -> f32 {
            let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            let mut acc = [_mm256_set1_ps(1.0); CHAINS];
            for _ in 0..ITERS {
                for v in acc.iter_mut() {
                    *v = _mm256_fmadd_ps(*v, a, b);
                }
            }
            let mut lanes = [0f32; 8];
            acc.iter()
                .map(|&v| {
                    _mm256_storeu_ps(lanes.as_mut_ptr(), v);
                    lanes.iter().sum::<f32>()
                })
                .sum()
        }

        #[target_feature(enable = "avx512f,avx512vnni")]
        unsafe fn vnni512() -> f32 {
            let (a, b) = (_mm512_set1_epi8(3), _mm512_set1_epi8(-2));
            let mut acc = [_mm512_setzero_si512(); CHAINS];
            for _ in 0..ITERS {
                for v in acc.iter_mut() {
                    *v = _mm512_dpbusd_epi32(*v, a, b);
                }
            }
            acc.iter().map(|&v| _mm512_reduce_add_epi32(v) as f32).sum()
        }

        /// The AVX2 int8 step without VNNI: `vpsignb` + `vpmaddubsw` + `vpmaddwd` + `vpaddd`
        /// per 32 multiply-adds, as the packed kernel issues it. Each of twelve chains feeds its
        /// own sum back into its next sign step, so no step can be folded into another, and twelve
        /// chains cover the step's latency (8–12 cycles, by CPU) on two multiply pipes.
        #[target_feature(enable = "avx2")]
        unsafe fn maddubs256() -> f32 {
            let (w, a, ones) = (
                _mm256_set1_epi8(3),
                _mm256_set1_epi8(2),
                _mm256_set1_epi16(1),
            );
            let mut acc: [__m256i; 12] = std::array::from_fn(|c| _mm256_set1_epi32(c as i32 + 1));
            for _ in 0..ITERS {
                for v in acc.iter_mut() {
                    let p = _mm256_maddubs_epi16(a, _mm256_sign_epi8(w, *v));
                    *v = _mm256_add_epi32(*v, _mm256_madd_epi16(p, ones));
                }
            }
            let mut lanes = [0i32; 8];
            acc.iter()
                .map(|&v| {
                    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, v);
                    lanes.iter().map(|&l| l as f32).sum::<f32>()
                })
                .sum()
        }

        /// Best of 30 short bursts of `f` run on every pool thread at once (the encoder's passes
        /// are bursts too); `per_call` operations each.
        fn rate(pool: &rayon::ThreadPool, per_call: f64, f: fn() -> f32) -> f64 {
            let mut best = 0f64;
            for _ in 0..30 {
                let t0 = Instant::now();
                let sink: f32 = pool.broadcast(|_| f()).iter().sum();
                let dt = t0.elapsed().as_secs_f64();
                assert!(sink.is_finite());
                best = best.max(per_call * pool.current_num_threads() as f64 / dt / 1e9);
            }
            best
        }
        let ops = (CHAINS * ITERS) as f64;
        let fma256 = if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA detected just above.
            Some(rate(pool, (12 * ITERS) as f64 * 16.0, || unsafe {
                fma256()
            }))
        } else {
            None
        };
        let fma512 = if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F detected just above.
            Some(rate(pool, ops * 32.0, || unsafe { fma512() }))
        } else {
            None
        };
        let vnni = if memex::embed::cpu_has_avx512_vnni() {
            // SAFETY: AVX-512F and VNNI detected by `cpu_has_avx512_vnni`.
            Some(rate(pool, ops * 64.0, || unsafe { vnni512() }))
        } else {
            None
        };
        let maddubs = if is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 detected just above.
            Some(rate(pool, (12 * ITERS) as f64 * 32.0, || unsafe {
                maddubs256()
            }))
        } else {
            None
        };
        [fma256, fma512, vnni, maddubs]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = pool;
        [None; 4]
    }
}

fn cold_start_ms(precision: Precision, kernel: KernelChoice, threads: usize) -> f64 {
    let kernel = match kernel {
        KernelChoice::Avx2 => "avx2",
        KernelChoice::Scalar => "scalar",
        KernelChoice::Auto => "auto",
    };
    let exe = root().join("target/release/memex");
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            let out = Command::new(&exe)
                .args([
                    "--precision",
                    precision.as_str(),
                    "--kernel",
                    kernel,
                    "--threads",
                ])
                .arg(threads.to_string())
                .arg("--model-dir")
                .arg(model_dir())
                .args(["embed", "refund status"])
                .output()
                .expect("target/release/memex runs (cargo build --release first)");
            assert!(out.status.success());
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[2]
}

fn main() {
    let threads = arg("--threads", 2);
    let n_texts = arg("--texts", 512);
    let repeats = arg("--repeats", 3).max(1);
    let raw = std::fs::read_to_string(root().join("data/corpus/texts.jsonl"))
        .expect("data/corpus/texts.jsonl is readable");
    let texts: Vec<String> = raw
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .take(n_texts)
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");

    let mut results = serde_json::Map::new();
    let mut tokens = 0;
    // int8 also on the AVX2 kernel where the CPU has AVX-512 VNNI, to show what VNNI buys.
    let mut runs = vec![
        (Precision::F32, KernelChoice::Auto, "f32"),
        (Precision::F16, KernelChoice::Auto, "f16"),
        (Precision::Int8, KernelChoice::Auto, "int8"),
    ];
    if Kernel::resolve(KernelChoice::Auto) != Kernel::resolve(KernelChoice::Avx2) {
        runs.push((Precision::F32, KernelChoice::Avx2, "f32_avx2"));
        runs.push((Precision::F16, KernelChoice::Avx2, "f16_avx2"));
        runs.push((Precision::Int8, KernelChoice::Avx2, "int8_avx2"));
    }
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    runs.retain(|r| only.is_none_or(|o| o == r.2));
    for (precision, kernel, name) in runs {
        let emb = MiniLmEmbedder::load(
            &model_dir(),
            EmbedderOptions {
                threads: Some(threads),
                precision,
                kernel,
                max_batch: 32,
                max_batch_tokens: 32 * 128,
                ..EmbedderOptions::default()
            },
        )
        .expect("model loads");
        tokens = refs
            .iter()
            .map(|t| emb.count_tokens(t).unwrap_or(0).min(256))
            .sum::<usize>();
        let query_tokens = emb.count_tokens(QUERY).unwrap();
        for _ in 0..20 {
            emb.embed_one(QUERY).unwrap();
        }
        let mut lat: Vec<f64> = (0..300)
            .map(|_| {
                let t0 = Instant::now();
                emb.embed_one(QUERY).unwrap();
                t0.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        lat.sort_by(f64::total_cmp);
        emb.embed(&refs[..64.min(refs.len())]).unwrap();
        let best = (0..repeats)
            .map(|_| {
                let t0 = Instant::now();
                emb.embed(&refs).unwrap();
                t0.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        results.insert(
            name.into(),
            serde_json::json!({
                "kernel": emb.kernel().map(|k| k.as_str()),
                "query_tokens": query_tokens,
                "query_ms": {"p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99)},
                "batch32": {"texts_per_s": refs.len() as f64 / best, "tokens_per_s": tokens as f64 / best},
                "weight_bytes_per_pass": emb.weight_bytes_per_pass(),
                "cold_start_ms": cold_start_ms(precision, kernel, threads),
            }),
        );
        eprintln!("{name}: {}", results[name]);
    }
    let peaks = arithmetic_peaks(&pool);
    let out = serde_json::json!({
        "threads": threads,
        "texts": refs.len(),
        "tokens": tokens,
        "memory_gb_per_s": bandwidth(&pool),
        "gemm_f32_gflop_per_s": gemm_peak(threads),
        "fma256_f32_gflop_per_s": peaks[0],
        "fma512_f32_gflop_per_s": peaks[1],
        "vnni_gmac_per_s": peaks[2],
        "maddubs_gmac_per_s": peaks[3],
        "precisions": results,
    });
    println!("{out}");
}
