"""How tokenizing one over-long text grows with its size: the time of two sizes and their ratio.

    .venv/bin/python benchmarks/tokenize_scaling.py MODEL [--megabytes 1] [--factor 4] [--runs 3]
                                                    [--output benchmarks/results/tokenize-scaling.jsonl]

A text is cut to the model's context only after the whole of it is tokenized, so a huge input costs
time in proportion to how the tokenizer scales. Times the tokenizer on a text of ``--megabytes`` and
one ``--factor`` times larger (best of ``--runs``); a ratio near ``--factor`` means linear time, near
its square quadratic. One JSONL record with the machine's fingerprint. Needs an idle machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mlx_embedgemma  # first: picks the BLAS before mlx.core is imported
import mlx.core as mx

from mlx_embedgemma.benchmarks.fingerprint import fingerprint
from mlx_embedgemma.benchmarks.memory import emit

SENTENCE = "mars is the red planet, and 火星 is its name in Chinese. "


def best_seconds(tokenizer, text: str, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        tokenizer.encode([text])
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--megabytes", type=float, default=1.0)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    model = mlx_embedgemma.load(args.model)
    unit = len(SENTENCE.encode("utf-8"))
    small = SENTENCE * max(1, round(args.megabytes * 1e6 / unit))
    sizes = {"small": small, "large": small * args.factor}
    seconds = {name: best_seconds(model.tokenizer, text, args.runs) for name, text in sizes.items()}
    emit({
        "kind": "tokenize_scaling",
        "bytes": {name: len(text.encode("utf-8")) for name, text in sizes.items()},
        "seconds": {name: round(s, 4) for name, s in seconds.items()},
        "factor": args.factor,
        "ratio": round(seconds["large"] / seconds["small"], 2),
        "runs": args.runs,
        "fingerprint": fingerprint(mx.Device(mx.cpu), threads=1, model_path=args.model),
    }, args.output)


if __name__ == "__main__":
    main()
