#!/usr/bin/env python3
"""Peer HNSW benchmark: hnswlib and faiss HNSWFlat on the same vectors and queries as
`memex bench retrieval`, with the same M / ef_construction / ef sweep, single thread.

Usage:
  memex bench retrieval --sizes 10000,100000 --vectors V.bin --queries-out Q.bin ...
  python benches/peers/hnsw_peer.py --vectors V.bin --queries Q.bin --sizes 10000,100000

Reads memex's vector files: b"MEMEXVEC", dim u64, count u64, count*dim f32 LE, checksum u64.
"""
import argparse
import os
import struct
import time

import numpy as np


def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:8] != b"MEMEXVEC":
        raise SystemExit(f"{path}: not a memex vector file")
    dim, n = struct.unpack("<QQ", raw[8:24])
    data = np.frombuffer(raw[24 : 24 + n * dim * 4], dtype="<f4").reshape(n, dim)
    return np.ascontiguousarray(data, dtype=np.float32)


def exact(base, queries, k):
    """The k-th best exact score per query (recall counts found items scoring at least that,
    so ties among duplicate vectors do not count as misses)."""
    scores = queries @ base.T
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    return scores, kth


def recall_of(truth, i, labels, k):
    scores, kth = truth
    found = [int(x) for x in labels if int(x) >= 0]
    return sum(1 for x in found if scores[i, x] >= kth[i] - 1e-6) / k


def measure(search_one, search_batch, queries, truth, k):
    lat = []
    rec = 0.0
    t_all = time.perf_counter()
    for i, q in enumerate(queries):
        t = time.perf_counter()
        labels = search_one(q)
        lat.append((time.perf_counter() - t) * 1e6)
        rec += recall_of(truth, i, labels, k)
    total = time.perf_counter() - t_all
    t = time.perf_counter()
    search_batch(queries)
    batch_qps = len(queries) / (time.perf_counter() - t)
    lat.sort()
    p = lambda x: lat[min(len(lat) - 1, round((len(lat) - 1) * x))]
    return rec / len(queries), p(0.5), p(0.99), len(queries) / total, batch_qps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--sizes", default="10000")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef", default="16,32,64,128")
    ap.add_argument("--peers", default="hnswlib,faiss")
    ap.add_argument("--seed", type=int, default=100, help="hnswlib random_seed (its default: 100)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    allv = load(args.vectors)
    queries = load(args.queries)
    k = args.k
    efs = [int(x) for x in args.ef.split(",")]
    peers = args.peers.split(",")
    print(f"| peer | vectors | build s (1 thr) | ef | recall@{k} | p50 µs | p99 µs | queries/s (per call) | queries/s (one batch call, 1 thr) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in [int(s) for s in args.sizes.split(",")]:
        base = allv[:size]
        truth = exact(base, queries, k)
        if "hnswlib" in peers:
            import hnswlib

            idx = hnswlib.Index(space="ip", dim=base.shape[1])
            idx.init_index(max_elements=size, M=args.m, ef_construction=args.ef_construction,
                           random_seed=args.seed)
            idx.set_num_threads(1)
            t = time.perf_counter()
            idx.add_items(base, np.arange(size), num_threads=1)
            build = time.perf_counter() - t
            for ef in efs:
                idx.set_ef(max(ef, k))
                r, p50, p99, qps, bqps = measure(
                    lambda q: idx.knn_query(q, k=k, num_threads=1)[0][0],
                    lambda qs: idx.knn_query(qs, k=k, num_threads=1),
                    queries, truth, k,
                )
                print(f"| hnswlib | {size} | {build:.2f} | {ef} | {r:.4f} | {p50:.0f} | {p99:.0f} | {qps:.0f} | {bqps:.0f} |")
        if "faiss" in peers:
            import faiss

            faiss.omp_set_num_threads(1)
            idx = faiss.IndexHNSWFlat(base.shape[1], args.m, faiss.METRIC_INNER_PRODUCT)
            idx.hnsw.efConstruction = args.ef_construction
            t = time.perf_counter()
            idx.add(base)
            build = time.perf_counter() - t
            for ef in efs:
                idx.hnsw.efSearch = max(ef, k)
                r, p50, p99, qps, bqps = measure(
                    lambda q: idx.search(q.reshape(1, -1), k)[1][0],
                    lambda qs: idx.search(qs, k),
                    queries, truth, k,
                )
                print(f"| faiss HNSWFlat | {size} | {build:.2f} | {ef} | {r:.4f} | {p50:.0f} | {p99:.0f} | {qps:.0f} | {bqps:.0f} |")


if __name__ == "__main__":
    main()
