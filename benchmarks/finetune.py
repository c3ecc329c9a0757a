"""Fine-tune the real model on AIA-BDE pairs and score it before and after, float and 4-bit, on held-out data.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 \
    .venv/bin/python benchmarks/finetune.py --source ~/.cache/embeddinggemma-300m --work /tmp/finetune-run \
        [--heldout-fraction 0.2] [--train-layers 3] [--lora-rank R] [--epochs 2] [--batch-size 32] \
        [--max-length 128] [--learning-rate 5e-5] [--recipe q4-mixed] [--output benchmarks/results/finetune.jsonl]

(On Linux the preload replaces the reference BLAS of MLX's wheel for training's matrix products; see
mlx_embedgemma/training/blas.py. The record says whether it was set.)

The split cannot leak: AIA-BDE gives each question exactly one relevant answer. A seeded fraction of the
answers that have questions is held out; every question about a held-out answer is a held-out query, and
training pairs are all the other questions with their answers. So no held-out query, and no held-out
answer, is ever trained on. Retrieval is scored as MTEB does (NDCG@10): each held-out query ranks the
whole corpus of 846 answers, the trained-on answers included (distractors a model that overfits them
would rank too high). STS-B is scored on its dev pairs (--sts-pairs, default all 1,500), which no training
sees: what fine-tuning costs outside its domain. Writes one JSON record with the settings, the split,
training time, tokens/s, peak memory and all scores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import mlx_embedgemma  # first: picks the BLAS before mlx.core is imported
import mlx.core as mx
import numpy as np

from mlx_embedgemma.benchmarks.fingerprint import fingerprint
from mlx_embedgemma.benchmarks.memory import peak_rss_mb
from mlx_embedgemma.benchmarks.quality import DIMS, ndcg_at_10, read_jsonl, spearman, truncate

DATA = Path(__file__).resolve().parents[2] / "shared" / "eval"


def split(data: Path, heldout_fraction: float, seed: int):
    from mlx_embedgemma.training.data import Example

    corpus = {d["_id"]: d["text"] for d in read_jsonl(data / "aiabde_corpus.jsonl")}
    queries = {q["_id"]: q["text"] for q in read_jsonl(data / "aiabde_queries.jsonl")}
    qrels = read_jsonl(data / "aiabde_qrels.jsonl")
    answer = {r["query_id"]: r["doc_id"] for r in qrels if r["score"] > 0}
    if len(answer) != len({r["query_id"] for r in qrels}):
        raise SystemExit("a query has several relevant answers: this split assumes one")
    answered = sorted(set(answer.values()))
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(answered)[: round(heldout_fraction * len(answered))].tolist())
    heldout_queries = sorted(q for q, d in answer.items() if d in held)
    trainable = sorted(q for q, d in answer.items() if d not in held)
    examples = [Example(queries[q], corpus[answer[q]], line=i + 1) for i, q in enumerate(trainable)]
    docs = sorted(corpus)
    index = {d: i for i, d in enumerate(docs)}
    trained = {answer[q] for q in trainable}
    evaluation = {
        "queries": [queries[q] for q in heldout_queries],
        "docs": [corpus[d] for d in docs],
        "relevant": [{index[answer[q]]} for q in heldout_queries],
        "heldout_answers": len(held),
        "unseen": [i for i, d in enumerate(docs) if d not in trained],  # answers no training pair holds
    }
    return examples, evaluation


def scores(path: Path, evaluation: dict, sts_pairs: list[dict]) -> dict:
    model = mlx_embedgemma.load(path)
    return score(
        model.encode(evaluation["queries"], prompt_name="query"), model.encode(evaluation["docs"], prompt_name="document"),
        evaluation["relevant"], evaluation["unseen"],
        model.encode([p["sentence1"] for p in sts_pairs], prompt_name="STS"),
        model.encode([p["sentence2"] for p in sts_pairs], prompt_name="STS"), sts_pairs,
    )


def score(qs, docs, relevant: list[set[int]], unseen: list[int], sts_a, sts_b, sts_pairs: list[dict]) -> dict:
    """NDCG@10 of queries against all docs and against the unseen ones only, and STS-B Spearman, per dim."""
    position = {d: i for i, d in enumerate(unseen)}
    relevant_unseen = [{position[d] for d in r} for r in relevant]
    gold = np.array([p["score"] for p in sts_pairs])
    return {
        "ndcg@10": {d: round(100 * ndcg_at_10(truncate(qs, d) @ truncate(docs, d).T, relevant), 2) for d in DIMS},
        "ndcg@10_unseen_answers": {
            d: round(100 * ndcg_at_10(truncate(qs, d) @ truncate(docs[unseen], d).T, relevant_unseen), 2) for d in DIMS
        },
        "sts_spearman": {d: round(100 * spearman(np.sum(truncate(sts_a, d) * truncate(sts_b, d), axis=1), gold), 2) for d in DIMS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="the sentence-transformers checkpoint folder")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the converted and tuned models")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--heldout-fraction", type=float, default=0.2, help="of the answers that have questions")
    parser.add_argument("--sts-pairs", type=int, default=None, help="the first N STS-B dev pairs [default: all]")
    parser.add_argument("--train-layers", type=int, default=3, help="train the top K blocks and the head; -1: all blocks")
    parser.add_argument("--freeze-head", action="store_true", help="keep the base's Dense head")
    parser.add_argument("--train-embeddings", action="store_true", help="train the token table too (needs --train-layers -1)")
    parser.add_argument("--tuned-weight", type=float, default=1.0, help="export base + W * (tuned - base)")
    parser.add_argument("--lora-rank", type=int, default=None, help="LoRA adapters instead of the weights")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mini-batch-size", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--speed-only", type=int, default=None, metavar="STEPS",
                        help="train this many steps and record speed and memory only (no export, no scores)")
    parser.add_argument("--recipe", default="q4-mixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--base-scores", type=Path, default=None,
                        help="a record of an earlier run with the same split: reuse its float32 base model's scores instead of measuring them again")
    args = parser.parse_args()

    from mlx_embedgemma.convert import convert
    from mlx_embedgemma.training.base import load_base
    from mlx_embedgemma.training.blas import slow_blas_hint
    from mlx_embedgemma.training.export import export
    from mlx_embedgemma.training.trainer import Settings, Trainer

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    machine = fingerprint(mx.default_device(), threads=os.cpu_count())  # the commit that runs, not the one at the end
    args.work.mkdir(parents=True, exist_ok=True)
    examples, evaluation = split(args.data, args.heldout_fraction, args.seed)
    if args.speed_only:  # only the pairs those steps use: the frozen blocks' output is kept for these alone
        examples = examples[: args.speed_only * args.batch_size]
    sts_pairs = read_jsonl(args.data / "stsb_dev.jsonl")[: args.sts_pairs]
    log(f"{len(examples)} training pairs; held out: {evaluation['heldout_answers']} answers and their {len(evaluation['queries'])} queries, ranked among {len(evaluation['docs'])} answers")

    settings = Settings(
        epochs=args.epochs, batch_size=args.batch_size, mini_batch_size=args.mini_batch_size, learning_rate=args.learning_rate,
        max_length=args.max_length, lora_rank=args.lora_rank, seed=args.seed, checkpoint_every=10**9,
        train_layers=None if args.train_layers < 0 else args.train_layers, freeze_head=args.freeze_head, tuned_weight=args.tuned_weight,
        train_embeddings=args.train_embeddings,
    )
    trainer = Trainer(load_base(args.source), settings)
    hint = slow_blas_hint()
    if hint:
        log(hint)
    shutil.rmtree(args.work / "checkpoint", ignore_errors=True)
    report = trainer.train(examples, args.work / "checkpoint", log=log, stop_after=args.speed_only, on_progress=lambda p: log(
        f"step {p.step}/{p.total} loss {p.loss:.4f} {p.steps_per_s:.3f} steps/s {p.tokens_per_s:.0f} tokens/s"))
    training_peak = peak_rss_mb()
    log(f"trained {report.steps} steps in {report.seconds:.0f} s, peak RSS {training_peak:.0f} MB")
    speed = {
        "benchmark": "finetune-speed" if args.speed_only else "finetune",
        "settings": {**settings.__dict__, "matryoshka_dims": list(settings.matryoshka_dims), "recipe": args.recipe},
        "train_pairs": len(examples), "trainable_parameters": report.trainable_parameters,
        "ld_preload": os.environ.get("LD_PRELOAD"), "cache_seconds": round(report.cache_seconds, 1),
        "steps": report.steps, "train_seconds": round(report.seconds, 1), "tokens": report.tokens,
        "tokens_per_s": round(report.tokens_per_s, 1), "peak_rss_mb_training": round(training_peak, 1),
        "first_loss": round(report.losses[0], 4), "last_loss": round(report.losses[-1], 4),
    }
    if args.speed_only:
        return write(args.output, {**speed, **machine})
    export(trainer.base, args.work / "tuned-f32", None, force=True, log=log)
    del trainer
    export(load_base(args.work / "tuned-f32"), args.work / "tuned-4bit", args.recipe, force=True, log=log)
    results, names = {}, ["tuned-f32", "base-4bit", "tuned-4bit"]
    # The base 4-bit model is converted and scored every run: a recipe's name can outlive its definition.
    convert(args.source, args.work / "base-4bit", recipe=args.recipe, force=True, log=log)
    if args.base_scores:
        earlier = json.loads(args.base_scores.read_text(encoding="utf-8").splitlines()[-1])
        split_keys = ("heldout_queries", "corpus", "sts_pairs")
        if [earlier.get(k) for k in split_keys] != [len(evaluation["queries"]), len(evaluation["docs"]), len(sts_pairs)] or earlier["settings"]["seed"] != args.seed:
            raise SystemExit(f"{args.base_scores}: its last record used another split or seed; measure the base again")
        # JSON keeps the sizes as strings; the scores here are keyed by int.
        results["base-f32"] = {m: {int(d): v for d, v in earlier["scores"]["base-f32"][m].items()} for m in earlier["scores"]["base-f32"]}
    else:
        convert(args.source, args.work / "base-f32", quantize=False, force=True, log=log)
        names.insert(0, "base-f32")
    for name in names:
        results[name] = scores(args.work / name, evaluation, sts_pairs)
        log(f"{name}: {json.dumps(results[name])}")
    record = {
        **speed,
        "data": "AIA-BDE (../shared/eval), split by answer: held-out answers' questions never trained on",
        "heldout_queries": len(evaluation["queries"]), "heldout_answers": evaluation["heldout_answers"], "corpus": len(evaluation["docs"]),
        "sts_pairs": len(sts_pairs), "scores": results,
        "base_scores_from": str(args.base_scores) if args.base_scores else None,
        "gain_4bit_vs_base_float": {d: round(results["tuned-4bit"]["ndcg@10"][d] - results["base-f32"]["ndcg@10"][d], 2) for d in DIMS},
        "gain_4bit_vs_base_4bit": {d: round(results["tuned-4bit"]["ndcg@10"][d] - results["base-4bit"]["ndcg@10"][d], 2) for d in DIMS},
        **machine,
    }
    write(args.output, record)


def write(output: Path | None, record: dict) -> None:
    print(json.dumps(record), flush=True)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

if __name__ == "__main__":
    main()
