"""Does RSS stay flat over a long stream of texts of mixed lengths? (issue 3)

    .venv/bin/python benchmarks/stream.py MODEL [--count 20000] [--median-tokens 32] [--sigma 1.2] [--chunk 100]
                                          [--output benchmarks/results/stream.jsonl]

Embeds ``--count`` documents, ``--chunk`` per ``encode`` call, and samples the process's RSS after
every call. Lengths follow a log-normal law (median ``--median-tokens``, ``--sigma``, clipped to 1 and
2,048 tokens) and every 1,000th text is 2,048 tokens long, so the stream mixes many short texts with
a long tail; the words vary so that new embedding rows keep arriving. One JSON record: the length
distribution that ran, RSS after the first 5% of texts and at the end, their difference, the highest
RSS sampled, VmHWM, and the RSS series.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import mlx_embedgemma
import numpy as np
from mlx_embedgemma.embedder import TruncationWarning
from mlx_embedgemma.precision import describe
from mlx_embedgemma.benchmarks.memory import WORDS, emit, peak_rss_mb, rss_mb

MAX_TOKENS = 2048


def target_lengths(count: int, median: int, seed: int, sigma: float = 1.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(median), sigma, count)), 1, MAX_TOKENS).astype(int)
    lengths[999::1000] = MAX_TOKENS
    return lengths


def make_text(model, tokens: int, rng: np.random.Generator, word_tokens: dict[str, int]) -> str:
    """About ``tokens`` tokens of text (prompt, <bos> and <eos> included); long ones are truncated."""
    budget = tokens - model.count_tokens([""], "document")[0]
    words: list[str] = []
    while budget > 0:
        # Words and numbers are costed apart so the cache stays bounded: a growing cache here would show
        # up as RSS growth of the library under test.
        parts = [WORDS[rng.integers(len(WORDS))]] + ([str(rng.integers(1000))] if rng.random() < 0.2 else [])
        for part in parts:
            if part not in word_tokens:
                word_tokens[part] = len(model.tokenizer.encode([" " + part]).ids[0]) - 2
            budget -= word_tokens[part]
        words.append("".join(parts))
    return " ".join(words) if words else "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--median-tokens", type=int, default=32)
    parser.add_argument("--sigma", type=float, default=1.2, help="spread of the log-normal lengths")
    parser.add_argument("--chunk", type=int, default=100, help="texts per encode call (RSS is sampled after each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    warnings.simplefilter("ignore", TruncationWarning)  # texts meant to be 2,048 tokens may come out a token over
    model = mlx_embedgemma.load(args.model)
    rng = np.random.default_rng(args.seed + 1)
    word_tokens: dict[str, int] = {}
    lengths = target_lengths(args.count, args.median_tokens, args.seed, args.sigma)
    warmup = max(args.chunk, args.count // 20)
    series: list[tuple[int, float | None]] = []
    tokens_seen: list[int] = []
    start = time.perf_counter()
    for first in range(0, args.count, args.chunk):
        texts = [make_text(model, int(n), rng, word_tokens) for n in lengths[first : first + args.chunk]]
        tokens_seen += model.count_tokens(texts, "document")
        out = model.encode(texts, prompt_name="document")
        assert out.shape == (len(texts), model.embedding_dim) and np.isfinite(out).all()
        now = rss_mb()
        series.append((first + len(texts), now and round(now, 1)))
        print(f"\r{series[-1][0]}/{args.count} texts, RSS {f'{now:.0f} MB' if now else 'unknown'}", end="",
              file=sys.stderr, flush=True)
    print(file=sys.stderr)
    record = {
        "model": args.model,
        "storage": describe(model.config),
        "plan": model.plan.describe(),
        "texts": args.count,
        "length_law": {"median_tokens": args.median_tokens, "sigma": args.sigma, "every_1000th": MAX_TOKENS},
        **token_counts(tokens_seen),
        **rss_summary(series, warmup),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "seconds": round(time.perf_counter() - start, 1),
        "machine": f"{platform.system()} {platform.machine()}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rss_series": series,
    }
    emit(record, args.output)


def token_counts(tokens_seen: list[int]) -> dict:
    seen = np.array(tokens_seen)
    return {
        "tokens": int(seen.sum()),
        "tokens_per_text": {
            "min": int(seen.min()), "median": int(np.median(seen)), "p99": int(np.percentile(seen, 99)),
            "max": int(seen.max()), "over_512": int((seen > 512).sum()), "at_max": int((seen >= MAX_TOKENS).sum()),
        },
    }


def rss_summary(series: list[tuple[int, float | None]], warmup: int) -> dict:
    """RSS after warm-up, at the end, its growth and largest sample; None where RSS could not be read."""
    after_warmup = next((rss for done, rss in series if done >= warmup), None)
    end = series[-1][1] if series else None
    known = [rss for _, rss in series if rss is not None]
    return {
        "rss_after_warmup_mb": after_warmup,
        "warmup_texts": warmup,
        "rss_end_mb": end,
        "growth_mb": round(end - after_warmup, 1) if end is not None and after_warmup is not None else None,
        "rss_max_sampled_mb": max(known, default=None),
    }


if __name__ == "__main__":
    main()
