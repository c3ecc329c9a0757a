"""Search speed and recall@10 against exact float32 search, at 10k, 100k and 1M stored vectors.

    .venv/bin/python benchmarks/search_scale.py [--sizes 10000,100000,1000000] [--queries 100]
        [--folder /tmp/search-scale] [--output benchmarks/results/search-scale-linux-x86_64.jsonl]

The vectors are SYNTHETIC (the model's 768 dims, no model involved): unit vectors drawn around random
centres (about 100 per centre, cosine ≈ 0.75 to it), and queries drawn the same way, so every query has
true neighbours to find. Random vectors without such structure would have no meaningful nearest
neighbours; real embeddings are more structured still, and put more of their information in the first
Matryoshka dimensions than these isotropic ones do, so recall at a small first-pass size is a lower
bound here. The float vectors live in a file on disk (memory-mapped) and are read only for the
candidates, as the store reads them from SQLite; the first pass is in memory. Times are per query, the
ranking only (no query embedding), on whatever else the machine is running: the record has the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import mlx_embedgemma  # first: picks the BLAS before mlx.core is imported
import numpy as np

from mlx_embedgemma.benchmarks.fingerprint import fingerprint
from mlx_embedgemma.search import quantize, ranking
from mlx_embedgemma.search.store import truncate

DIM = 768
K = 10
PER_CENTRE = 100
SPREAD = 0.032  # per-dimension noise around a unit centre: cosine to it 1 / sqrt(1 + 768 * 0.032**2) ≈ 0.75
BLOCK = 100_000
# (store, first-pass dims, candidates rescored with the 768-d float vectors; None: no rescoring)
SETUPS = [("float32", 768, None), ("binary", 768, None), ("binary", 768, 100), ("binary", 768, 200),
          ("binary", 256, 200), ("binary", 256, 500), ("int8", 256, 100), ("int8", 256, 200)]


def around(centres: np.ndarray, which: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = centres[which] + SPREAD * rng.standard_normal((len(which), DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(n: int, folder: Path, seed: int = 0) -> tuple[np.memmap, np.ndarray]:
    """``n`` stored vectors in a file under ``folder`` (made once per size and seed), and the centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // PER_CENTRE, 1), DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    path = folder / f"vectors-{n}-{seed}.f32"
    if not path.exists():
        tmp = path.with_suffix(".partial")
        out = np.memmap(tmp, "<f4", mode="w+", shape=(n, DIM))
        for start in range(0, n, BLOCK):
            rows = min(BLOCK, n - start)
            out[start:start + rows] = around(centres, rng.integers(0, len(centres), rows), rng)
        out.flush()
        del out
        os.replace(tmp, path)
    return np.memmap(path, "<f4", mode="r", shape=(n, DIM)), centres


def exact_top(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    scores = np.empty((len(queries), len(vectors)), np.float32)
    for start in range(0, len(vectors), BLOCK):
        scores[:, start:start + BLOCK] = queries @ np.asarray(vectors[start:start + BLOCK]).T
    return np.stack([ranking.top(s, K) for s in scores])


def first_pass(vectors: np.ndarray, store: str, dim: int) -> quantize.FirstPass:
    cut = [truncate(np.asarray(vectors[s:s + BLOCK]), dim) for s in range(0, len(vectors), BLOCK)]
    ranges = None
    if store == "int8":
        ranges = quantize.calibrate(np.concatenate([c.min(axis=0, keepdims=True) for c in cut] +
                                                   [c.max(axis=0, keepdims=True) for c in cut]))
    codes = np.concatenate([quantize.encode(c, store, ranges) for c in cut])
    return quantize.FirstPass(codes, store, dim, ranges)


def measure(n: int, queries_n: int, folder: Path, stores: tuple[str, ...]) -> list[dict]:
    vectors, centres = build(n, folder)
    rng = np.random.default_rng(1)
    queries = around(centres, rng.integers(0, len(centres), queries_n), rng)
    truth = exact_top(vectors, queries)
    records = []
    for store, dim, candidates in SETUPS:
        if store not in stores:
            continue
        first = first_pass(vectors, store, dim)
        rescore = (lambda rows: np.asarray(vectors[rows])) if candidates else None
        ranking.funnel(queries[0], first, K, rescore, candidates)  # warm-up
        times, recalls = [], []
        for q, want in zip(queries, truth):
            started = time.perf_counter()
            rows, _ = ranking.funnel(q, first, K, rescore, candidates)
            times.append(time.perf_counter() - started)
            recalls.append(len(set(rows.tolist()) & set(want.tolist())) / K)
        records.append({
            "vectors": n, "synthetic": True, "dim": DIM, "store": store, "first_pass_dim": dim,
            "rescore_candidates": candidates, "recall_at_10_vs_float32_exact": round(float(np.mean(recalls)), 4),
            "ms_per_query_median": round(1000 * float(np.median(times)), 2),
            "ms_per_query_p90": round(1000 * float(np.percentile(times, 90)), 2),
            "first_pass_bytes_per_vector": quantize.code_bytes(store, dim), "queries": queries_n,
            "load_average": os.getloadavg(),
        })
        print(json.dumps(records[-1]), flush=True)
        del first
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/search-scale"), help="where the synthetic vectors are written")
    parser.add_argument("--stores", default="float32,int8,binary", help="first passes to measure (float32 and int8 are slow at 1M)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    import mlx.core as mx

    args.folder.mkdir(parents=True, exist_ok=True)
    machine = fingerprint(mx.Device(mx.cpu), threads=os.cpu_count())
    for n in (int(s) for s in args.sizes.split(",")):
        for record in measure(n, args.queries, args.folder, tuple(args.stores.split(","))):
            if args.output:
                args.output.parent.mkdir(parents=True, exist_ok=True)
                with args.output.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({**record, **machine}) + "\n")


if __name__ == "__main__":
    main()
