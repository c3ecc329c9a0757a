"""Throughput of `embed-dataset` with 1 and 2 Ray actors against one `embed` process, same corpus (issue 17).

    .venv/bin/python benchmarks/ray_scale.py MODEL [--count 5000] [--tokens 64] [--files 8] [--actors 1,2]
                                             [--output benchmarks/results/ray-scale-linux-x86_64-2core.jsonl]

The corpus: ``--count`` texts of ``--tokens`` tokens or a few fewer (counted as the model sees them: the
document prompt, ``<bos>`` and ``<eos>`` included), cut as consecutive runs of words from the
docstrings of this Python's standard library (read with ``ast`` from the source files in sorted order,
nothing imported; the stream starts over if it runs out). Same Python version, same corpus: its sha256
is in every record. It is written once as one text per line for `embed` and as ``--files`` JSONL files
(``id``, ``text``) for `embed-dataset`.

Each run is a fresh process, timed from its start to its exit, so process start, model load and
(for `embed-dataset`) starting a local Ray are included; each writes its vectors, and the
`embed-dataset` records carry the largest difference of their vectors to the `embed` run's. The machine
should be otherwise idle: the runs use every core.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mlx_embedgemma  # noqa: F401  (first: picks the BLAS before mlx.core is imported)
import mlx.core as mx
import numpy as np

from mlx_embedgemma.benchmarks.fingerprint import fingerprint
from mlx_embedgemma.benchmarks.memory import emit
from mlx_embedgemma.loading import load
from mlx_embedgemma.precision import describe

PROMPT = "document"


def docstring_words() -> Iterator[str]:
    """The words of every docstring in the standard library's source, file by file in sorted order, for ever."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not ({"site-packages", "test", "tests"} & set(p.relative_to(root).parts)))
    while True:
        for path in files:
            try:
                tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError):  # lib2to3 fixtures and the like
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=False)
                    if doc:
                        yield from inspect.cleandoc(doc).split()


def make_corpus(model, count: int, tokens: int) -> list[str]:
    """``count`` texts of ``tokens - 8`` to ``tokens`` tokens as the model sees them with the document prompt."""
    words = docstring_words()
    pool: list[str] = []
    texts = []
    n = max(1, tokens // 2)  # a first guess at words per text, then kept from text to text

    def length(k: int) -> int:
        return model.count_tokens([" ".join(pool[:k])], prompt_name=PROMPT)[0]

    while len(texts) < count:
        while len(pool) < 4 * n + 64:
            pool.append(next(words))
        n = min(n, len(pool) - 1)
        while n > 1 and length(n) > tokens:
            n -= 1
        while length(n + 1) <= tokens:
            n += 1
        size = length(n)
        if tokens - 8 <= size <= tokens:
            texts.append(" ".join(pool[:n]))
            del pool[:n]
        else:  # a word too long for the room left (or for any text): skipped
            del pool[n if size < tokens - 8 else 0]
    return texts


def write_corpus(texts: list[str], folder: Path, files: int) -> tuple[Path, Path]:
    """The corpus as one text per line (for `embed`) and as ``files`` JSONL files of ids and texts (for `embed-dataset`)."""
    lines = folder / "corpus.txt"
    lines.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    parts = folder / "corpus"
    parts.mkdir()
    for k, chunk in enumerate(np.array_split(np.arange(len(texts)), files)):
        rows = [json.dumps({"id": int(i), "text": texts[i]}) for i in chunk]
        (parts / f"part-{k:03d}.jsonl").write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return lines, parts


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def dataset_vectors(folder: Path, count: int) -> np.ndarray:
    import pyarrow.parquet as pq

    out = np.full((count, 0), np.nan, np.float32)
    for path in sorted(folder.glob("*.parquet")):
        t = pq.read_table(path)
        if t["error"].null_count != t.num_rows:
            raise SystemExit(f"{path}: rows failed: {[e for e in t['error'].to_pylist() if e][:3]}")
        rows = np.array(t["embedding"].to_pylist(), np.float32)
        if out.shape[1] == 0:
            out = np.full((count, rows.shape[1]), np.nan, np.float32)
        out[np.array(t["id"].to_pylist())] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--count", type=int, default=5000, help="texts in the corpus")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per text, prompt included (each has 8 fewer at most)")
    parser.add_argument("--files", type=int, default=8, help="JSONL files the corpus is split into for embed-dataset")
    parser.add_argument("--actors", default="1,2", help="comma list of actor counts to run embed-dataset with")
    parser.add_argument("--output", type=Path, default=None, help="append JSONL records here")
    args = parser.parse_args()

    model = load(args.model)
    texts = make_corpus(model, args.count, args.tokens)
    lengths = np.array(model.count_tokens(texts, prompt_name=PROMPT))
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]
    cores = os.cpu_count() or 1
    # Taken before the runs: the commit is the one measured.
    machine = fingerprint(mx.Device(mx.cpu), cores, args.model, describe(model.config))
    corpus = {"source": "Python standard library docstrings", "python": sys.version.split()[0], "sha256_16": digest,
              "texts": len(texts), "unique_texts": len(set(texts)), "tokens_total": int(lengths.sum()),
              "tokens_min": int(lengths.min()), "tokens_mean": round(float(lengths.mean()), 1), "tokens_max": int(lengths.max()),
              "prompt_name": PROMPT}
    cli = shutil.which("mlx-embedgemma", path=os.path.dirname(sys.executable))
    cli = [cli] if cli else [sys.executable, "-m", "mlx_embedgemma.cli"]

    def record(runner: str, actors: int | None, seconds: float, command: list[str], diff: float | None) -> None:
        emit({"kind": "scale", "runner": runner, "actors": actors,
              "threads_per_actor": cores // actors if actors else None, "seconds": round(seconds, 2),
              "texts_per_s": round(len(texts) / seconds, 3), "tokens_per_s": round(int(lengths.sum()) / seconds, 1),
              "max_abs_diff_vs_embed": diff, "command": " ".join(command[len(cli):]), "corpus": corpus,
              "fingerprint": machine}, args.output)

    with tempfile.TemporaryDirectory(prefix="ray-scale-") as tmp:
        work = Path(tmp)
        lines, parts = write_corpus(texts, work, args.files)
        command = [*cli, "embed", str(args.model), "--input", str(lines), "--prompt-name", PROMPT,
                   "--output", str(work / "embed.npy")]
        record("embed", None, timed(command), command, None)
        reference = np.load(work / "embed.npy")
        for actors in (int(a) for a in args.actors.split(",")):
            out = work / f"ray-{actors}"
            command = [*cli, "embed-dataset", str(parts), str(out), "--model", str(args.model),
                       "--prompt-name", PROMPT, "--actors", str(actors)]
            seconds = timed(command)
            diff = float(np.max(np.abs(dataset_vectors(out, len(texts)) - reference)))
            if not np.isfinite(diff):
                raise SystemExit(f"{out}: some ids are missing from the output")
            record("embed-dataset", actors, seconds, command, round(diff, 8))


if __name__ == "__main__":
    main()
