#!/usr/bin/env python3
"""memex at f32, f16 and int8 next to sentence-transformers, in one run, with the physical limits.

    /path/to/venv/bin/python benches/compare_precision.py --threads 2 --texts 512

Runs `examples/probes/precision_bench.rs` (query latency, batch-32 throughput, cold start per precision,
plus the machine's memory bandwidth, f32 gemm peak and arithmetic peaks measured in the same
process) and then
benches/peers/st_peer.py (sentence-transformers, PyTorch CPU, same texts, same threads), and
prints one table. Never run in CI (the peer needs a venv with sentence-transformers).

Limits printed next to each figure, from the peaks measured in the same run:
  query  max(weight bytes per pass / memory bandwidth, arithmetic time)
  bulk   1 / arithmetic time per text
Arithmetic time: FLOPs / f32 peak, where the f32 peak is the best of the gemm crate's rate and
the CPU's measured FMA rate (512-bit for the AVX-512 tier's kernels, else 256-bit); for int8 the projections' multiply-adds count at
the measured `vpdpbusd` rate on the AVX-512 tier and at the measured rate of the AVX2 int8 step
(`vpsignb` + `vpmaddubsw` + `vpmaddwd` + `vpaddd` per 32) on the AVX2 tier; attention stays f32.
Per token: 10.6 M projection multiply-adds (6 layers x (4 x 384 x 384 + 2 x 384 x 1536)) and
attention's 4 x 384 x seq FLOPs per layer.
"""
import argparse, json, os, subprocess, sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PROJ_PARAMS = 6 * (4 * 384 * 384 + 2 * 384 * 1536)


def arith_s_per_token(seq, f32_peak, int8_peak):
    """Seconds of arithmetic per token at the measured peaks (`int8_peak`: the int8 step rate in G MAC/s for the projections; None: all f32)."""
    attn = 6 * 4 * 384 * seq / (f32_peak * 1e9)
    if int8_peak:
        return PROJ_PARAMS / (int8_peak * 1e9) + attn
    return 2 * PROJ_PARAMS / (f32_peak * 1e9) + attn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--example", "precision_bench"], cwd=ROOT, check=True)
    m = json.loads(subprocess.run(
        [os.path.join(ROOT, "target/release/examples/precision_bench"), "--threads", str(args.threads),
         "--texts", str(args.texts), "--repeats", str(args.repeats)],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    peer = json.loads(subprocess.run(
        [sys.executable, os.path.join(ROOT, "benches/peers/st_peer.py"), "--threads", str(args.threads),
         "--texts", str(args.texts), "--batches", "32", "--repeats", str(args.repeats)],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    bw, gemm = m["memory_gb_per_s"], m["gemm_f32_gflop_per_s"]
    fma256 = m.get("fma256_f32_gflop_per_s") or 0
    fma512 = m.get("fma512_f32_gflop_per_s") or 0
    vnni = m.get("vnni_gmac_per_s")
    st_q, st_tps = peer["query_ms"]["p50"], peer["throughput"]["32"]["texts_per_s"]
    tokens, texts = m["tokens"], m["texts"]
    avg_seq = tokens / texts
    print(json.dumps({"memex": m, "sentence_transformers": peer}))
    print(f"\n{texts} texts, {tokens} tokens; {args.threads} threads; memory {bw:.1f} GB/s; "
          f"f32 gemm {gemm:.1f} GFLOP/s, FMA 256-bit {m.get('fma256_f32_gflop_per_s') or 0:.1f}, "
          f"512-bit {m.get('fma512_f32_gflop_per_s') or 0:.1f}; vpdpbusd {vnni or 0:.0f} G MAC/s, "
          f"AVX2 int8 step {m.get('maddubs_gmac_per_s') or 0:.0f} G MAC/s")
    print(f"{'':<10}{'query p50':>11}{'p99':>8}{'vs ST':>8}{'limit':>8}"
          f"{'texts/s b32':>13}{'vs ST':>8}{'limit':>8}{'cold ms':>9}{'MB/pass':>9}")
    for p, r in m["precisions"].items():
        q = r["query_ms"]["p50"]
        qt = r["query_tokens"]
        byte_ms = r["weight_bytes_per_pass"] / (bw * 1e9) * 1e3
        avx512 = (r["kernel"] or "").startswith("avx512")
        # The AVX-512 tier's f32/f16 kernel issues 512-bit FMAs; the AVX2 kernels 256-bit ones.
        peak = max(gemm, fma256, fma512 if avx512 else 0)
        p_vnni = (vnni if avx512 else m.get("maddubs_gmac_per_s")) if p.startswith("int8") else None
        flop_ms = qt * arith_s_per_token(qt, peak, p_vnni) * 1e3
        tps = r["batch32"]["texts_per_s"]
        bulk_limit = 1 / (arith_s_per_token(avg_seq, peak, p_vnni) * avg_seq)
        print(f"{p:<10}{q:>9.2f}ms{r['query_ms']['p99']:>8.2f}{st_q / q:>7.2f}x{max(byte_ms, flop_ms):>6.2f}ms"
              f"{tps:>13.1f}{tps / st_tps:>7.2f}x{bulk_limit:>8.0f}{r['cold_start_ms']:>9.0f}"
              f"{r['weight_bytes_per_pass'] / 1e6:>9.1f}")
    print(f"{'ST':<10}{st_q:>9.2f}ms{peer['query_ms']['p99']:>8.2f}{'':>16}{st_tps:>13.1f}")


if __name__ == "__main__":
    main()
