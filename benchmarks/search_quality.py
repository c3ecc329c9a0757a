"""Retrieval quality of each search store on AIA-BDE: NDCG@10 per store and Matryoshka size, bytes per
chunk, and ranking time per query, against float32 exact search.

    .venv/bin/python benchmarks/search_quality.py MODEL --cache /tmp/aiabde-768.npz \
        [--data ../shared/eval] [--output benchmarks/results/search-quality-linux-x86_64.jsonl]

Each corpus document is one chunk (the FAQ answers are short). Embedding the corpus is the slow part:
it is done once at the full size and cached (``--cache``); every size derives from the 768-d vectors by
truncation and renormalization, exactly as the model's Matryoshka output does. Ranking uses the code the
store uses (`mlx_embedgemma.search.ranking.funnel`), with the float vectors for rescoring read from a
file on disk (a memory map), only for the candidates.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import mlx_embedgemma  # first: picks the BLAS before mlx.core is imported
import numpy as np

from mlx_embedgemma.benchmarks.fingerprint import fingerprint, model_hash
from mlx_embedgemma.benchmarks.quality import DIMS, ndcg_at_10, read_jsonl
from mlx_embedgemma.search import quantize, ranking
from mlx_embedgemma.search.store import truncate

K = 10


def load_data(data: Path) -> tuple[list[dict], list[dict], list[set[int]]]:
    corpus = read_jsonl(data / "aiabde_corpus.jsonl")
    doc_index = {d["_id"]: i for i, d in enumerate(corpus)}
    relevant: dict[str, set[int]] = {}
    for q in read_jsonl(data / "aiabde_qrels.jsonl"):
        if q["score"] > 0:
            relevant.setdefault(q["query_id"], set()).add(doc_index[q["doc_id"]])
    queries = [q for q in read_jsonl(data / "aiabde_queries.jsonl") if q["_id"] in relevant]
    return corpus, queries, [relevant[q["_id"]] for q in queries]


def embeddings(model_path: str, corpus: list[dict], queries: list[dict], cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Full-size document and query vectors, from ``cache`` when it holds this model's."""
    digest = model_hash(model_path)
    if cache.exists():
        held = np.load(cache)
        if str(held["model_hash"]) == digest and len(held["docs"]) == len(corpus) and len(held["queries"]) == len(queries):
            return held["docs"], held["queries"]
    model = mlx_embedgemma.load(model_path)
    docs = model.encode([d["text"] for d in corpus], prompt_name="document")
    qs = model.encode([q["text"] for q in queries], prompt_name="query")
    np.savez(cache, docs=docs, queries=qs, model_hash=digest)
    return docs, qs


def as_scores(rows: list[np.ndarray], n_docs: int) -> np.ndarray:
    """Rankings as a score matrix (best first gets the highest), for ndcg_at_10."""
    scores = np.full((len(rows), n_docs), -np.inf)
    for i, row in enumerate(rows):
        scores[i, row] = np.arange(len(row), 0, -1)
    return scores


def evaluate(docs: np.ndarray, queries: np.ndarray, relevant: list[set[int]], folder: Path) -> list[dict]:
    full = docs.shape[1]
    on_disk = folder / "full.f32"
    docs.astype("<f4").tofile(on_disk)
    floats = np.memmap(on_disk, "<f4", mode="r", shape=docs.shape)
    exact_full = 100 * ndcg_at_10(queries @ docs.T, relevant)
    records = []
    for dim in DIMS:
        first = truncate(docs, dim)
        exact_dim = 100 * ndcg_at_10(truncate(queries, dim) @ first.T, relevant)
        for store in quantize.STORES:
            ranges = quantize.calibrate(first) if store == "int8" else None
            codes = quantize.FirstPass(quantize.encode(first, store, ranges), store, dim, ranges)
            for rescore in ((False,) if store == "float32" else (False, True)):
                rows, started = [], time.perf_counter()
                for q in queries:
                    found, _ = ranking.funnel(q, codes, K, rescore=(lambda pool: np.asarray(floats[pool])) if rescore else None)
                    rows.append(found)
                per_query_ms = 1000 * (time.perf_counter() - started) / len(queries)
                score = 100 * ndcg_at_10(as_scores(rows, len(docs)), relevant)
                records.append({
                    "task": "aiabde-retrieval", "metric": "ndcg@10", "store": store, "dim": dim, "rescored": rescore,
                    "rescore_dim": full if rescore else None, "score": round(score, 3),
                    "float32_exact_at_dim": round(exact_dim, 3), "float32_exact_at_768": round(exact_full, 3),
                    "loss_vs_float32_at_dim": round(exact_dim - score, 3),
                    "memory_bytes_per_chunk": quantize.code_bytes(store, dim),
                    "disk_bytes_per_chunk": quantize.code_bytes(store, dim) + (4 * full if store != "float32" else 0),
                    "ranking_ms_per_query": round(per_query_ms, 3), "docs": len(docs), "queries": len(queries),
                })
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--cache", type=Path, required=True, help="where the full-size vectors are kept between runs")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "eval")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    import mlx.core as mx

    corpus, queries, relevant = load_data(args.data)
    docs, qs = embeddings(args.model, corpus, queries, args.cache)
    machine = {**fingerprint(mx.Device(mx.cpu), threads=os.cpu_count(), model_path=Path(args.model)), "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory() as folder:
        records = evaluate(docs, qs, relevant, Path(folder))
    for record in records:
        line = json.dumps({**record, "model": args.model, **machine})
        print(line, flush=True)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            with args.output.open("a", encoding="utf-8") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
