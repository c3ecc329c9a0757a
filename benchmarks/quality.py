"""Quality at each Matryoshka size: STS-B Spearman and AIA-BDE retrieval NDCG@10 (x100), as MTEB scores them.

    .venv/bin/python benchmarks/quality.py MODEL [MODEL ...] [--tasks sts,retrieval] [--limit N]
                                           [--data ../shared/eval] [--output benchmarks/results/quality.jsonl]

One JSON record per model, task and size. Compare models pairwise on the same items (see
../shared/eval/README.md): the sampling margin of one score is wide, the paired difference is not.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import mlx_embedgemma
import numpy as np

DIMS = (768, 512, 256, 128)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks (as scipy.stats.rankdata)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def ndcg_per_query(scores: np.ndarray, relevant: list[set[int]]) -> np.ndarray:
    top = np.argsort(-scores, axis=1)[:, :10]
    discounts = 1 / np.log2(np.arange(2, 12))
    values = []
    for row, rel in zip(top, relevant):
        dcg = sum(discounts[i] for i, doc in enumerate(row) if doc in rel)
        ideal = discounts[: min(len(rel), 10)].sum()
        values.append(dcg / ideal)
    return np.array(values)


def ndcg_at_10(scores: np.ndarray, relevant: list[set[int]]) -> float:
    return float(np.mean(ndcg_per_query(scores, relevant)))


def truncate(e: np.ndarray, dim: int) -> np.ndarray:
    t = e[:, :dim]
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def sts(model, data: Path, limit: int | None) -> dict[int, float]:
    pairs = read_jsonl(data / "stsb_dev.jsonl")[:limit]
    a = model.encode([p["sentence1"] for p in pairs], prompt_name="STS")
    b = model.encode([p["sentence2"] for p in pairs], prompt_name="STS")
    gold = np.array([p["score"] for p in pairs])
    return {d: 100 * spearman(np.sum(truncate(a, d) * truncate(b, d), axis=1), gold) for d in DIMS}


def retrieval_items(data: Path, limit: int | None = None) -> tuple[list[dict], list[dict], list[set[int]]]:
    """AIA-BDE's corpus, its (first ``limit``) queries that have a relevant answer, and each one's answer rows."""
    corpus = read_jsonl(data / "aiabde_corpus.jsonl")
    queries = read_jsonl(data / "aiabde_queries.jsonl")[:limit]
    doc_index = {d["_id"]: i for i, d in enumerate(corpus)}
    relevant: dict[str, set[int]] = {}
    for q in read_jsonl(data / "aiabde_qrels.jsonl"):
        if q["score"] > 0:
            relevant.setdefault(q["query_id"], set()).add(doc_index[q["doc_id"]])
    queries = [q for q in queries if q["_id"] in relevant]
    return corpus, queries, [relevant[q["_id"]] for q in queries]


def retrieval(model, data: Path, limit: int | None) -> dict[int, float]:
    corpus, queries, rel = retrieval_items(data, limit)
    docs = model.encode([d["text"] for d in corpus], prompt_name="document")
    qs = model.encode([q["text"] for q in queries], prompt_name="query")
    return {d: 100 * ndcg_at_10(truncate(qs, d) @ truncate(docs, d).T, rel) for d in DIMS}


def model_identity(model) -> dict:
    """What a result belongs to: the weights file's hash, and how the folder stores them."""
    from mlx_embedgemma.benchmarks.fingerprint import model_hash
    from mlx_embedgemma.precision import describe

    return {"weights_sha256": model_hash(model.path), "storage": describe(model.config)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--tasks", default="sts,retrieval")
    parser.add_argument("--limit", type=int, default=None, help="first N pairs / queries only")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "eval")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    tasks = {"sts": sts, "retrieval": retrieval}
    for path in args.models:
        model = mlx_embedgemma.load(path)
        identity = model_identity(model)
        for task in args.tasks.split(","):
            start = time.perf_counter()
            scores = tasks[task](model, args.data, args.limit)
            for dim, score in scores.items():
                record = {
                    "model": path, **identity, "task": task,
                    "metric": "spearman" if task == "sts" else "ndcg@10", "dim": dim, "score": round(score, 3),
                    "limit": args.limit, "seconds": round(time.perf_counter() - start, 1),
                    "machine": f"{platform.system()} {platform.machine()}",
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
                print(json.dumps(record), flush=True)
                if args.output:
                    args.output.parent.mkdir(parents=True, exist_ok=True)
                    with args.output.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
