"""Fine-tune the real model on AIA-BDE pairs and score it before and after, float and 4-bit, on held-out data.

    .venv/bin/python benchmarks/finetune.py --source ~/.cache/embeddinggemma-300m --work /tmp/finetune-run \
        [--heldout-docs 48] [--train-pairs 160] [--sts-pairs 100] [--lora-rank 16] [--batch-size 16] \
        [--max-length 64] [--learning-rate 5e-4] [--recipe q4-mixed] [--output benchmarks/results/finetune.jsonl]

The split cannot leak: AIA-BDE gives each question exactly one relevant answer. Answers (documents) are
drawn at random (seeded) into a held-out set; every question whose answer is held out is a held-out
query, and training pairs are drawn only from the other questions, whose answers are not held out. So no
held-out query, and no question about a held-out answer, is ever trained on. Retrieval is scored as
MTEB does (NDCG@10), each held-out query against the held-out answers (a sub-corpus: the full 846
answers cost too much to embed four times on a 2-core machine); STS-B on the first --sts-pairs dev pairs.
Writes one JSON record with the settings, the split, training time, tokens/s, peak memory and all scores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlx_embedgemma  # first: picks the BLAS before mlx.core is imported
import mlx.core as mx
import numpy as np

from mlx_embedgemma.benchmarks.fingerprint import fingerprint
from mlx_embedgemma.benchmarks.memory import peak_rss_mb
from mlx_embedgemma.benchmarks.quality import DIMS, ndcg_at_10, read_jsonl, spearman, truncate

DATA = Path(__file__).resolve().parents[2] / "shared" / "eval"


def split(data: Path, heldout_docs: int, train_pairs: int, seed: int):
    from mlx_embedgemma.training.data import Example

    corpus = {d["_id"]: d["text"] for d in read_jsonl(data / "aiabde_corpus.jsonl")}
    queries = {q["_id"]: q["text"] for q in read_jsonl(data / "aiabde_queries.jsonl")}
    answer = {r["query_id"]: r["doc_id"] for r in read_jsonl(data / "aiabde_qrels.jsonl") if r["score"] > 0}
    answered = sorted(set(answer.values()))
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(answered)[:heldout_docs].tolist())
    heldout_queries = sorted(q for q, d in answer.items() if d in held)
    trainable = sorted(q for q, d in answer.items() if d not in held)
    chosen = [trainable[i] for i in rng.permutation(len(trainable))[:train_pairs]]
    examples = [Example(queries[q], corpus[answer[q]], line=i + 1) for i, q in enumerate(chosen)]
    docs = sorted(held)
    evaluation = {
        "queries": [queries[q] for q in heldout_queries],
        "docs": [corpus[d] for d in docs],
        "relevant": [{docs.index(answer[q])} for q in heldout_queries],
    }
    return examples, evaluation


def scores(path: Path, evaluation: dict, sts_pairs: list[dict]) -> dict:
    model = mlx_embedgemma.load(path)
    docs = model.encode(evaluation["docs"], prompt_name="document")
    qs = model.encode(evaluation["queries"], prompt_name="query")
    a = model.encode([p["sentence1"] for p in sts_pairs], prompt_name="STS")
    b = model.encode([p["sentence2"] for p in sts_pairs], prompt_name="STS")
    gold = np.array([p["score"] for p in sts_pairs])
    return {
        "ndcg@10": {d: round(100 * ndcg_at_10(truncate(qs, d) @ truncate(docs, d).T, evaluation["relevant"]), 2) for d in DIMS},
        "sts_spearman": {d: round(100 * spearman(np.sum(truncate(a, d) * truncate(b, d), axis=1), gold), 2) for d in DIMS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="the sentence-transformers checkpoint folder")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the converted and tuned models")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--heldout-docs", type=int, default=48)
    parser.add_argument("--train-pairs", type=int, default=160)
    parser.add_argument("--sts-pairs", type=int, default=100)
    parser.add_argument("--lora-rank", type=int, default=16, help="0: full fine-tuning")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mini-batch-size", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--recipe", default="q4-mixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--base-scores", type=Path, default=None,
                        help="a record of an earlier run with the same split: reuse its base model scores instead of measuring them again")
    args = parser.parse_args()

    from mlx_embedgemma.convert import convert
    from mlx_embedgemma.training.base import load_base
    from mlx_embedgemma.training.export import export
    from mlx_embedgemma.training.trainer import Settings, Trainer

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    args.work.mkdir(parents=True, exist_ok=True)
    examples, evaluation = split(args.data, args.heldout_docs, args.train_pairs, args.seed)
    sts_pairs = read_jsonl(args.data / "stsb_dev.jsonl")[: args.sts_pairs]
    log(f"{len(examples)} training pairs; held out: {len(evaluation['queries'])} queries, {len(evaluation['docs'])} answers")

    settings = Settings(
        epochs=args.epochs, batch_size=args.batch_size, mini_batch_size=args.mini_batch_size, learning_rate=args.learning_rate,
        max_length=args.max_length, lora_rank=args.lora_rank or None, seed=args.seed, checkpoint_every=10**9,
    )
    trainer = Trainer(load_base(args.source), settings)
    report = trainer.train(examples, args.work / "checkpoint", on_progress=lambda p: log(
        f"step {p.step}/{p.total} loss {p.loss:.4f} {p.steps_per_s:.3f} steps/s {p.tokens_per_s:.0f} tokens/s"))
    training_peak = peak_rss_mb()
    log(f"trained {report.steps} steps in {report.seconds:.0f} s, peak RSS {training_peak:.0f} MB")
    export(trainer.base, args.work / "tuned-f32", None, force=True, log=log)
    del trainer
    export(load_base(args.work / "tuned-f32"), args.work / "tuned-4bit", args.recipe, force=True, log=log)
    results, names = {}, ["tuned-f32", "tuned-4bit"]
    if args.base_scores:
        earlier = json.loads(args.base_scores.read_text(encoding="utf-8").splitlines()[-1])
        split_keys = ("heldout_queries", "heldout_docs", "sts_pairs")
        if [earlier[k] for k in split_keys] != [len(evaluation["queries"]), len(evaluation["docs"]), len(sts_pairs)] or earlier["settings"]["seed"] != args.seed or earlier["settings"]["recipe"] != args.recipe:
            raise SystemExit(f"{args.base_scores}: its last record used another split, seed or recipe; measure the base again")
        # JSON keeps the sizes as strings; the scores here are keyed by int.
        results.update({k: {m: {int(d): v for d, v in earlier["scores"][k][m].items()} for m in earlier["scores"][k]} for k in ("base-f32", "base-4bit")})
    else:
        convert(args.source, args.work / "base-4bit", recipe=args.recipe, force=True, log=log)
        convert(args.source, args.work / "base-f32", quantize=False, force=True, log=log)
        names = ["base-f32", *names[:1], "base-4bit", *names[1:]]
    for name in names:
        results[name] = scores(args.work / name, evaluation, sts_pairs)
        log(f"{name}: {json.dumps(results[name])}")
    record = {
        "benchmark": "finetune",
        "data": "AIA-BDE (../shared/eval), split by answer: held-out answers' questions never trained on",
        "heldout_queries": len(evaluation["queries"]), "heldout_docs": len(evaluation["docs"]),
        "train_pairs": len(examples), "sts_pairs": len(sts_pairs),
        "settings": {**settings.__dict__, "matryoshka_dims": list(settings.matryoshka_dims), "recipe": args.recipe},
        "steps": report.steps, "train_seconds": round(report.seconds, 1), "tokens": report.tokens,
        "tokens_per_s": round(report.tokens_per_s, 1), "trainable_parameters": report.trainable_parameters,
        "first_loss": round(report.losses[0], 4), "last_loss": round(report.losses[-1], 4),
        "peak_rss_mb_training": round(training_peak, 1), "scores": results,
        "base_scores_from": str(args.base_scores) if args.base_scores else None,
        "gain_4bit_vs_base_float": {d: round(results["tuned-4bit"]["ndcg@10"][d] - results["base-f32"]["ndcg@10"][d], 2) for d in DIMS},
        **fingerprint(mx.default_device(), threads=__import__("os").cpu_count()),
    }
    print(json.dumps(record), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
