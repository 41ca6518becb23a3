#!/usr/bin/env python3
"""LoCoMo turn-level recall peers for `memex eval locomo` (see BENCHMARKS.md).

Same turns ("Speaker: text" plus " [shares CAPTION]"), same questions (categories 1-4 with
evidence), same scoring (evidence split on ';', stripped, every id kept) as the Rust evaluator:
  * dense: sentence-transformers all-MiniLM-L6-v2, flat cosine (what the seed memex did);
  * bm25:  rank-bm25 BM25Okapi over lower-cased \\w+ tokens;
  * rrf:   reciprocal-rank fusion (c = 60) of the two.
Usage: /work/venv-peers/bin/python benches/peers/locomo_peers.py FILE... [--model DIR]
Not used in CI.
"""
import argparse, json, re, time
import numpy as np
from rank_bm25 import BM25Okapi
from sentence_transformers import SentenceTransformer

KS = [1, 5, 10, 20]

def load(path):
    d = json.load(open(path))
    c = d.get("conversation", d)
    turns = []
    for key in sorted((k for k in c if re.fullmatch(r"session_\d+", k)), key=lambda k: int(k.split("_")[1])):
        for t in c[key]:
            text = f"{t['speaker']}: {t.get('text', '')}"
            if t.get("blip_caption"):
                text += f" [shares {t['blip_caption']}]"
            turns.append((t["dia_id"], text))
    qs = []
    for q in d["qa"]:
        ev = []
        for e in q.get("evidence", []):
            for p in str(e).split(";"):
                p = p.strip()
                if p and p not in ev:
                    ev.append(p)
        if q.get("category") in (1, 2, 3, 4) and ev:
            qs.append((q["question"], ev, q["category"]))
    return turns, qs

def tok(s):
    return re.findall(r"\w+", s.lower())

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--model", default="models/all-MiniLM-L6-v2")
    a = ap.parse_args()
    model = SentenceTransformer(a.model, device="cpu")
    sums = {m: np.zeros(len(KS)) for m in ("dense", "bm25", "rrf")}
    lat = {"dense": [], "bm25": []}
    n = 0
    for f in a.files:
        turns, qs = load(f)
        ids = [t[0] for t in turns]
        emb = model.encode([t[1] for t in turns], normalize_embeddings=True, batch_size=64)
        bm = BM25Okapi([tok(t[1]) for t in turns])
        qemb = model.encode([q[0] for q in qs], normalize_embeddings=True, batch_size=64)
        for (question, ev, _), qv in zip(qs, qemb):
            t0 = time.perf_counter(); dense = np.argsort(-(emb @ qv)); lat["dense"].append(time.perf_counter() - t0)
            t0 = time.perf_counter(); kw = np.argsort(-bm.get_scores(tok(question))); lat["bm25"].append(time.perf_counter() - t0)
            fused = {}
            for ranking in (dense, kw):
                for r, i in enumerate(ranking[:100]):
                    fused[i] = fused.get(i, 0.0) + 1.0 / (60 + r + 1)
            rrf = sorted(fused, key=lambda i: -fused[i])
            for m, ranking in (("dense", dense), ("bm25", kw), ("rrf", rrf)):
                for j, k in enumerate(KS):
                    top = {ids[i] for i in ranking[:k]}
                    sums[m][j] += sum(e in top for e in ev) / len(ev)
            n += 1
    print(json.dumps({
        "questions": n,
        "recall": {m: {str(k): round(s[j] / n, 3) for j, k in enumerate(KS)} for m, s in sums.items()},
        "latency_ms_p99": {m: round(1000 * float(np.percentile(v, 99)), 3) for m, v in lat.items()},
    }))

if __name__ == "__main__":
    main()
