"""Choose fine-tuning settings on a dev split of the training answers, never on finetune.py's held-out set.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 \
    .venv/bin/python benchmarks/finetune_search.py --learning-rate 1e-5 [--freeze-head] [--epochs 1] \
        [--batch-size 32] [--train-layers 3] [--interpolate 1,0.5] [--reuse-checkpoint] [--base-only]

finetune.py holds out 20% of AIA-BDE's answers (seed 0) and their questions for its final scores. This
script takes only the remaining training pairs and splits them the same way again (20% of their
answers, seed 1): the dev queries are the questions about dev answers, training uses the rest. Each dev
query ranks all 846 answers ("all", as finetune.py scores) and, separately, only the answers no training
pair holds ("unseen"); STS-B Spearman on all 1,500 dev pairs measures forgetting.
``--interpolate 1,0.5`` scores the weights base + a * (tuned - base) for each a (1 is the tuned
model, 0 the base), one record each: the retrieval/forgetting trade-off of one run. Everything runs
in float32 through the kept output of the frozen blocks (training/frozen.py), which is what makes a
setting cost minutes: that output is computed once (about 18 minutes here) and kept in
``--cache`` between runs. Documents are cut at 256 tokens for these scores, queries and training texts
at 128, so the figures are comparable with each other, not with finetune.py's (whole documents).
One record per scored model in benchmarks/results/finetune-search-linux-x86_64-2core.jsonl, with
finetune.py's score names (its ``score``); the first records, made before ``--interpolate``, name
them ndcg@10_all / ndcg@10_unseen and score the first 500 STS pairs only.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

import mlx_embedgemma  # first: picks the BLAS before mlx.core is imported
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from mlx_embedgemma.benchmarks.finetune import DATA, score, split
from mlx_embedgemma.benchmarks.fingerprint import fingerprint
from mlx_embedgemma.benchmarks.quality import read_jsonl
from mlx_embedgemma.training.base import load_base
from mlx_embedgemma.training import checkpoint
from mlx_embedgemma.training.batches import embed_all, tokenize
from mlx_embedgemma.training.trainer import Settings, Trainer, interpolate

OUTPUT = Path(__file__).resolve().parent / "results" / "finetune-search-linux-x86_64-2core.jsonl"
QUERY_LENGTH, DOCUMENT_LENGTH = 128, 256


def dev_split(examples):
    answers = sorted({e.positive for e in examples})
    dev_answers = set(np.random.default_rng(1).permutation(answers)[: round(0.2 * len(answers))].tolist())
    return [e for e in examples if e.positive not in dev_answers], [e for e in examples if e.positive in dev_answers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("~/.cache/embeddinggemma-300m").expanduser())
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-layers", type=int, default=3)
    parser.add_argument("--freeze-head", action="store_true")
    parser.add_argument("--base-only", action="store_true", help="score the base model only")
    parser.add_argument("--interpolate", default="1", help="comma-separated a: score base + a * (tuned - base)")
    parser.add_argument("--reuse-checkpoint", action="store_true",
                        help="score the last run's final checkpoint (same settings, checked) instead of training again")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/finetune-search"))
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.0f} s] {message}", flush=True)

    machine = fingerprint(mx.default_device(), threads=os.cpu_count())
    examples, evaluation = split(DATA, 0.2, 0)
    train, dev = dev_split(examples)
    corpus = evaluation["docs"]
    index = {d: i for i, d in enumerate(corpus)}
    relevant = [{index[e.positive]} for e in dev]
    trained = {e.positive for e in train}
    unseen = [i for i, d in enumerate(corpus) if d not in trained]
    sts = read_jsonl(DATA / "stsb_dev.jsonl")
    log(f"{len(train)} training pairs; {len(dev)} dev queries; {len(corpus)} answers ({len(unseen)} unseen)")

    settings = Settings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate, max_length=QUERY_LENGTH,
                        train_layers=args.train_layers, freeze_head=args.freeze_head, checkpoint_every=10**9)
    trainer = Trainer(load_base(args.source), settings)
    prompts, tokenizer = trainer.base.config["prompts"], trainer.base.tokenizer
    queries = tokenize(tokenizer, prompts["query"], [e.anchor for e in dev], QUERY_LENGTH)[0]
    documents = tokenize(tokenizer, prompts["document"], corpus, DOCUMENT_LENGTH)[0]
    pairs = tokenize(tokenizer, prompts["STS"], [p["sentence1"] for p in sts] + [p["sentence2"] for p in sts], QUERY_LENGTH)[0]
    kept = args.cache / f"frozen-{args.train_layers}.pkl"
    if kept.exists():
        trainer.bottom.states = pickle.loads(kept.read_bytes())
    count = len(trainer.bottom.states)
    rows = trainer.prepare(train, "training data")
    trainer.bottom.add([t for r in rows for t in r] + queries + documents + pairs)
    if len(trainer.bottom.states) != count:
        args.cache.mkdir(parents=True, exist_ok=True)
        kept.write_bytes(pickle.dumps(trainer.bottom.states))
        log(f"kept the frozen blocks' output of {len(trainer.bottom.states)} texts in {kept}")

    def scores() -> dict:
        dim = trainer.network.args.embedding_dim
        q, d, s = (embed_all(trainer.bottom.embed, rows, dim, 32) for rows in (queries, documents, pairs))
        return score(q, d, relevant, unseen, s[: len(sts)], s[len(sts) :], sts)

    base = dict(tree_flatten(trainer.network.trainable_parameters()))  # mlx arrays are immutable: training replaces, never overwrites
    report, steps = None, 0
    if args.reuse_checkpoint:
        saved = checkpoint.load(args.cache / "checkpoint", trainer.settings_record(len(train)))
        trainer.network.update(tree_unflatten(saved.parameters))
        steps = saved.step
    elif not args.base_only:
        shutil.rmtree(args.cache / "checkpoint", ignore_errors=True)
        report = trainer.train(train, args.cache / "checkpoint", log=log, on_progress=lambda p: log(
            f"step {p.step}/{p.total} loss {p.loss:.4f} {p.tokens_per_s:.0f} tokens/s") if p.step % 10 == 0 else None)
        steps = report.steps
    tuned = dict(tree_flatten(trainer.network.trainable_parameters()))
    for a in [0.0] if args.base_only else [float(x) for x in args.interpolate.split(",")]:
        trainer.network.update(interpolate(base, tuned, a))
        record = {
            "benchmark": "finetune-search", "model": "base" if args.base_only else "tuned", "interpolation": a,
            "settings": {**settings.__dict__, "matryoshka_dims": list(settings.matryoshka_dims)},
            "split": "finetune.py's training pairs, split again by answer (20%, seed 1)",
            "train_pairs": len(train), "dev_queries": len(dev), "corpus": len(corpus), "unseen_answers": len(unseen), "sts_pairs": len(sts),
            "steps": steps, "train_seconds": round(report.seconds, 1) if report else None, "reused_checkpoint": args.reuse_checkpoint,
            "scores": scores(), **machine,
        }
        log(json.dumps(record["scores"]))
        with args.output.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    sys.exit(main())
