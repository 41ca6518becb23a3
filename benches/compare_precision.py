#!/usr/bin/env python3
"""memex at f32, f16 and int8 next to sentence-transformers, in one run, with the physical limits.

    /path/to/venv/bin/python benches/compare_precision.py --threads 2 --texts 512

Runs `examples/precision_bench.rs` (query latency, batch-32 throughput, cold start per precision,
plus the machine's memory bandwidth and f32 gemm peak measured in the same process) and then
benches/peers/st_peer.py (sentence-transformers, PyTorch CPU, same texts, same threads), and
prints one table. Never run in CI (the peer needs a venv with sentence-transformers).

Limits printed next to each figure:
  query  max(weight bytes per pass / memory bandwidth, FLOPs / gemm peak)
  bulk   FLOPs / gemm peak (tokens/s at 100 % of the measured f32 gemm peak)
FLOPs per token: 2 x 10.6 M projection weights + attention (4 x 384 x seq per layer x 6).
"""
import argparse, json, os, subprocess, sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PROJ_PARAMS = 6 * (4 * 384 * 384 + 2 * 384 * 1536)


def flops_per_token(seq):
    return 2 * PROJ_PARAMS + 6 * 4 * 384 * seq


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
    bw, peak = m["memory_gb_per_s"], m["gemm_f32_gflop_per_s"]
    st_q, st_tps = peer["query_ms"]["p50"], peer["throughput"]["32"]["texts_per_s"]
    tokens, texts = m["tokens"], m["texts"]
    avg_seq = tokens / texts
    print(json.dumps({"memex": m, "sentence_transformers": peer}))
    print(f"\n{texts} texts, {tokens} tokens; {args.threads} threads; memory {bw:.1f} GB/s; "
          f"f32 gemm peak {peak:.1f} GFLOP/s")
    print(f"{'':<8}{'query p50':>11}{'p99':>8}{'vs ST':>8}{'limit':>8}"
          f"{'texts/s b32':>13}{'vs ST':>8}{'limit':>8}{'cold ms':>9}{'MB/pass':>9}")
    for p, r in m["precisions"].items():
        q = r["query_ms"]["p50"]
        qt = r["query_tokens"]
        byte_ms = r["weight_bytes_per_pass"] / (bw * 1e9) * 1e3
        flop_ms = qt * flops_per_token(qt) / (peak * 1e9) * 1e3
        tps = r["batch32"]["texts_per_s"]
        bulk_limit = peak * 1e9 / flops_per_token(avg_seq) / avg_seq
        print(f"{p:<8}{q:>9.2f}ms{r['query_ms']['p99']:>8.2f}{st_q / q:>7.2f}x{max(byte_ms, flop_ms):>6.2f}ms"
              f"{tps:>13.1f}{tps / st_tps:>7.2f}x{bulk_limit:>8.0f}{r['cold_start_ms']:>9.0f}"
              f"{r['weight_bytes_per_pass'] / 1e6:>9.1f}")
    print(f"{'ST':<8}{st_q:>9.2f}ms{peer['query_ms']['p99']:>8.2f}{'':>16}{st_tps:>13.1f}")


if __name__ == "__main__":
    main()
