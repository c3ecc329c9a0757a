"""How far two models' STS-B and NDCG@10 scores differ on the same items, with a paired bootstrap interval.

    .venv/bin/python benchmarks/paired_quality.py BASELINE MODEL [MODEL ...] [--data ../shared/eval]
        [--resamples 2000] [--cache /tmp/paired-quality] [--output benchmarks/results/paired-quality-<os>-<arch>.jsonl]

quality.py scores one model at a time; the sampling margin of one score (about ±1.3 at 768 dims) hides
the small differences quantization makes. Here each MODEL is compared with BASELINE (usually the
float32 folder) on the same items: the difference of the scores, and its 95% interval from resampling
the items (STS-B pairs, AIA-BDE queries) with replacement, the same resample for both models. One record
per model, task and dimension. Embeddings are cached by weights hash in ``--cache``.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import mlx_embedgemma
from mlx_embedgemma.benchmarks import quality
from mlx_embedgemma.benchmarks.fingerprint import git_commit, kernel

HERE = Path(__file__).resolve().parent


def embeddings(path: str, data: Path, cache: Path) -> tuple[dict, dict[str, np.ndarray]]:
    model = mlx_embedgemma.load(path)
    identity = quality.model_identity(model) | {"kernel": kernel(model.plan)}
    file = cache / f"{identity['weights_sha256']}-{identity['kernel']}.npz"
    if file.exists():
        with np.load(file) as saved:
            return identity, {k: saved[k] for k in saved.files}
    pairs = quality.read_jsonl(data / "stsb_dev.jsonl")
    corpus, queries, _ = quality.retrieval_items(data)
    out = {
        "sts_a": model.encode([p["sentence1"] for p in pairs], prompt_name="STS"),
        "sts_b": model.encode([p["sentence2"] for p in pairs], prompt_name="STS"),
        "docs": model.encode([d["text"] for d in corpus], prompt_name="document"),
        "queries": model.encode([q["text"] for q in queries], prompt_name="query"),
    }
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(file, **out)
    return identity, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "eval")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/paired-quality"))
    parser.add_argument("--output", type=Path, default=HERE / "results" / f"paired-quality-{platform.system().lower()}-{platform.machine()}.jsonl")
    args = parser.parse_args()

    gold = np.array([p["score"] for p in quality.read_jsonl(args.data / "stsb_dev.jsonl")])
    _, _, rel = quality.retrieval_items(args.data)
    rng = np.random.default_rng(0)
    sts_draws = rng.integers(0, len(gold), size=(args.resamples, len(gold)))
    query_draws = rng.integers(0, len(rel), size=(args.resamples, len(rel)))

    def scores(e: dict[str, np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
        sims = np.sum(quality.truncate(e["sts_a"], dim) * quality.truncate(e["sts_b"], dim), axis=1)
        queries, docs = quality.truncate(e["queries"], dim), quality.truncate(e["docs"], dim)
        return sims, quality.ndcg_per_query(queries @ docs.T, rel)

    base_id, base = embeddings(args.baseline, args.data, args.cache)
    for path in args.models:
        identity, ours = embeddings(path, args.data, args.cache)
        for dim in quality.DIMS:
            (base_sims, base_ndcg), (our_sims, our_ndcg) = scores(base, dim), scores(ours, dim)
            sts = lambda sims, ix: 100 * quality.spearman(sims[ix], gold[ix])
            everything = np.arange(len(gold))
            for task, diff, draws in (
                ("sts", sts(our_sims, everything) - sts(base_sims, everything),
                 [sts(our_sims, ix) - sts(base_sims, ix) for ix in sts_draws]),
                ("retrieval", 100 * (our_ndcg.mean() - base_ndcg.mean()), [100 * (our_ndcg[ix].mean() - base_ndcg[ix].mean()) for ix in query_draws]),
            ):
                low, high = np.percentile(draws, [2.5, 97.5])
                record = {
                    "model": path, **identity, "baseline": args.baseline, "baseline_weights": base_id["weights_sha256"],
                    "task": task, "dim": dim, "difference": round(float(diff), 3),
                    "interval95": [round(float(low), 3), round(float(high), 3)], "resamples": args.resamples,
                    "items_changed": int(np.sum(our_ndcg != base_ndcg)) if task == "retrieval" else None,
                    "git_commit": git_commit(), "machine": f"{platform.system()} {platform.machine()}",
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
                print(f"{path} {task} {dim}: {record['difference']:+.2f} [{low:+.2f}, {high:+.2f}]", flush=True)
                with args.output.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
