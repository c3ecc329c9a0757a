"""What a benchmark child measures, for every runner: speed, latency, cosine to the reference.

Standalone on purpose (numpy and the standard library only): the peers' children (peer_child.py) load it
by path and never import mlx_embedgemma, so nothing of ours runs in the process that times them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

try:
    from .memory import peak_rss_mb
except ImportError:  # loaded by path from peer_child.py, outside the package
    from memory import peak_rss_mb

QUERY = "Which planet is known as the Red Planet?"  # 18 tokens with the query prompt, <bos> and <eos>
DOC_TOKENS = (128, 512)
BATCHES = (1, 8, 32)


@dataclass
class Settings:
    """How long each measurement runs; ``--quick`` takes the short column."""

    latency_runs: int = 100
    warmup_runs: int = 5
    throughput_repeats: int = 3
    memory_docs: int = 256
    index_vectors: int = 100_000
    search_runs: int = 100
    index_sizes_for: int = 1_000_000  # index size is reported for this many vectors

    @classmethod
    def quick(cls) -> "Settings":
        return cls(latency_runs=30, warmup_runs=3, throughput_repeats=1, memory_docs=32, search_runs=30)


@dataclass
class Job:
    """What one child process measures (passed to it as JSON)."""

    runner: str
    device: str  # "cpu" or "gpu"
    model: str  # MLX folder, sentence-transformers folder or GGUF file
    variant: str  # storage of the model: "q4-mixed", "float32", "GGUF Q4_0", ...
    dims: list[int]
    threads: int
    settings: dict[str, Any]
    texts_file: str
    reference_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Encoder:
    """The interface the measuring code needs from every runner: embed texts with a task prompt."""

    name = ""
    version = ""

    def encode(self, texts: list[str], prompt_name: str, dim: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        """What runs the model (kernel, plan), for the fingerprint."""
        return {}

    def overhead(self, texts: dict, dim: int) -> Iterator[dict]:
        """Records comparing ``encode`` with the bare network on the same batch, where the runner can."""
        return iter(())


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_speed(job: Job, encoder: Encoder) -> Iterator[dict]:
    s = Settings(**job.settings)
    texts = json.loads(Path(job.texts_file).read_text(encoding="utf-8"))
    yield {"kind": "runner", "runner_version": encoder.version, **encoder.describe()}
    for dim in job.dims:
        for _ in range(s.warmup_runs):
            encoder.encode([QUERY], "query", dim)
        times = np.array([timed(lambda: encoder.encode([QUERY], "query", dim)) for _ in range(s.latency_runs)]) * 1000
        yield {
            "kind": "latency", "dim": dim, "tokens": texts["query_tokens"], "runs": s.latency_runs,
            "p50_ms": round(float(np.percentile(times, 50)), 2), "p95_ms": round(float(np.percentile(times, 95)), 2),
            "min_ms": round(float(times.min()), 2),
        }
        for tokens in DOC_TOKENS:
            docs = texts[f"docs{tokens}"]
            for batch in BATCHES:
                encoder.encode(docs[: min(batch, 8)], "document", dim)  # warm-up at this length
                seconds = [timed(lambda: encoder.encode(docs[:batch], "document", dim)) for _ in range(s.throughput_repeats)]
                best = float(np.median(seconds))
                yield {
                    "kind": "throughput", "dim": dim, "doc_tokens": tokens, "batch": batch, "repeats": len(seconds),
                    "seconds": round(best, 4), "texts_per_s": round(batch / best, 3), "tokens_per_s": round(batch * tokens / best, 1),
                }
    yield from encoder.overhead(texts, max(job.dims))
    if job.reference_dir:
        full = max(job.dims)
        record = accuracy(lambda texts, name: encoder.encode(texts, name, full), Path(job.reference_dir), full)
        if record:
            yield record
    yield {"kind": "process", "peak_rss_mb": round(peak_rss_mb(), 1)}


def encode_by_prompt(encode: Callable[[list[str], str], np.ndarray], rows: list[dict], shape) -> np.ndarray:
    """``encode(texts, prompt_name)`` of every row, the texts of one prompt together (as the model batches
    them), in row order. Rows over the model's limit are truncated as in the references, so truncation
    warnings are silenced."""
    import warnings

    ours = np.zeros(shape, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted({r["prompt_name"] for r in rows}):
            index = [i for i, r in enumerate(rows) if r["prompt_name"] == name]
            ours[index] = encode([rows[i]["text"] for i in index], name)
    return ours


def accuracy(encode: Callable[[list[str], str], np.ndarray], reference_dir: Path, dim: int) -> dict | None:
    """Cosine to the reference embeddings (sentence-transformers float32) on their own texts and prompts.

    ``encode(texts, prompt_name)`` gives full-size embeddings; the 2,331-token row is truncated, as in
    the reference (see encode_by_prompt).
    """
    reference = np.load(reference_dir / "public.npy")
    if reference.shape[1] != dim:
        return None  # another model than the reference's (the tests' tiny one)
    rows = [json.loads(line) for line in (reference_dir / "public.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    ours = encode_by_prompt(encode, rows, reference.shape)
    cosine = np.sum(ours * reference, axis=1) / np.linalg.norm(ours, axis=1)
    return {"kind": "accuracy", "dim": reference.shape[1], "rows": len(rows),
            "mean_cosine": round(float(cosine.mean()), 5), "min_cosine": round(float(cosine.min()), 5)}
