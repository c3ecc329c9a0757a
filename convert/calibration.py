"""Calibration inputs for GPTQ: a fixed set of texts shipped with the converter, and the layer
statistics they produce.

The texts come from nowhere near the evaluation sets: Python's own docstrings (English prose and
code) and the day and month names of every glibc locale (hundreds of languages and scripts), each
under one of the model's task prompts, as the model sees them in use. They are frozen in
``calibration.jsonl`` so that a conversion gives the same model on every machine and Python version
(macOS has no glibc locale sources; docstrings change between Python releases).
``python -m mlx_embedgemma.convert.calibration`` rebuilds that file from the running Python and OS.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_embedgemma.backend import is_linear
from mlx_embedgemma.embedder import EmbeddingGemma

_MODULES = [
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures", "configparser",
    "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions",
    "functools", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "http.server", "inspect",
    "io", "ipaddress", "itertools", "json", "logging", "mailbox", "math", "mimetypes", "multiprocessing",
    "operator", "optparse", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched", "secrets",
    "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket", "sqlite3", "ssl", "statistics",
    "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
    "traceback", "typing", "unittest", "urllib.parse", "uuid", "warnings", "weakref", "xml.dom.minidom", "zipfile",
]
_LOCALES = Path("/usr/share/i18n/locales")
_PROMPT_CYCLE = ["document", "query", "STS", "Clustering", "Classification", "document", "InstructionRetrieval"]


def _docstrings() -> list[str]:
    texts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated aliases (typing.re, ...) warn when touched
        for name in _MODULES:
            texts += _module_docstrings(name)
    return texts


def _module_docstrings(name: str) -> list[str]:
    try:
        module = importlib.import_module(name)
    except ImportError:
        return []
    texts = []
    for obj in [module, *(v for k, v in sorted(vars(module).items()) if not k.startswith("_"))]:
        doc = inspect.getdoc(obj)
        if doc and len(doc) > 60 and (obj is module or getattr(obj, "__module__", None) == module.__name__):
            texts.append(doc[:2500])
    return texts


def _locale_lines() -> list[str]:
    lines = []
    decode = lambda s: re.sub(r"<U([0-9A-Fa-f]{4,6})>", lambda m: chr(int(m[1], 16)), s)
    for path in sorted(_LOCALES.glob("*_*")) if _LOCALES.is_dir() else []:
        text = path.read_text(encoding="utf-8", errors="replace")
        words = [decode(w) for key in ("day", "mon") for w in re.findall(r'"((?:<U[0-9A-Fa-f]+>)+)"', _field(text, key))]
        if words:
            lines.append(" ".join(words))
    return lines


def _field(text: str, key: str) -> str:
    match = re.search(rf"^{key}\s+(.*?)(?:\n(?!\s*\")(?=\S)|\Z)", text, re.M | re.S)
    return match[1] if match else ""


CALIBRATION_FILE = Path(__file__).with_name("calibration.jsonl")


def calibration_texts(limit: int = 128) -> list[tuple[str, str]]:
    """(prompt name, text) pairs from the shipped calibration file."""
    lines = CALIBRATION_FILE.read_text(encoding="utf-8").splitlines()[:limit]
    return [(row["prompt_name"], row["text"]) for row in map(json.loads, lines)]


def build_calibration_texts(limit: int = 128) -> list[tuple[str, str]]:
    """Docstrings interleaved with multilingual lines, as found on this machine; deterministic."""
    docs, langs = _docstrings(), _locale_lines()
    rng = np.random.default_rng(0)
    docs = [docs[i] for i in rng.permutation(len(docs))][: limit * 3 // 4]
    langs = [langs[i] for i in rng.permutation(len(langs))][: limit - len(docs)]
    texts = [t for pair in zip(docs, langs) for t in pair] + docs[len(langs) :] + langs[len(docs) :]
    return [(_PROMPT_CYCLE[i % len(_PROMPT_CYCLE)], t) for i, t in enumerate(texts[:limit])]


class _Tap(nn.Module):
    """Passes through to a Linear layer and reports its input."""

    def __init__(self, inner: nn.Module, report: Callable[[mx.array], None]):
        super().__init__()
        self.inner = inner
        self._report = report

    def __call__(self, x: mx.array) -> mx.array:
        self._report(x)
        return self.inner(x)


def collect_hessians(model: EmbeddingGemma, texts: list[tuple[str, str]], max_tokens: int = 256) -> dict[str, np.ndarray]:
    """Sum of xᵀx over every token that reaches each Linear layer of the transformer blocks.

    Texts run one at a time so that no padding token enters the statistics.
    """
    network = model.network
    linears = {p: m for p, m in network.named_modules() if is_linear(m) and p.startswith("model.layers.")}
    sums: dict[str, np.ndarray] = {}

    def report(path: str, x: mx.array) -> None:
        # numpy's BLAS: MLX's CPU wheel on Linux links the reference BLAS, far slower for this product
        x = np.asarray(x.reshape(-1, x.shape[-1]).astype(mx.float32))
        product = (x.T @ x).astype(np.float64)
        sums[path] = sums[path] + product if path in sums else product

    network.update_modules(_unflatten({p: _Tap(m, lambda x, p=p: report(p, x)) for p, m in linears.items()}))
    try:
        for prompt_name, text in texts:
            ids = model.tokenizer.encode([model.prompt_prefix(prompt_name if prompt_name in model.prompts else None, None) + text]).ids[0]
            ids = ids[: max_tokens - 1] + ids[-1:]
            mx.eval(network(mx.array([ids]), mx.ones((1, len(ids)), dtype=mx.bool_)))
    finally:
        network.update_modules(_unflatten(linears))
    return sums


def _unflatten(flat: dict[str, nn.Module]):
    from mlx.utils import tree_unflatten

    return tree_unflatten(list(flat.items()))


if __name__ == "__main__":
    with CALIBRATION_FILE.open("w", encoding="utf-8") as f:
        for prompt_name, text in build_calibration_texts():
            f.write(json.dumps({"prompt_name": prompt_name, "text": text}, ensure_ascii=False) + "\n")
    print(f"wrote {CALIBRATION_FILE}")
