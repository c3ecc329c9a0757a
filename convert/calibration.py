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
# The short texts above plus long documents in many scripts, code, logs, tables and repeated input.
WIDE_CALIBRATION_FILE = Path(__file__).with_name("calibration-wide.jsonl")


def calibration_texts(limit: int | None = 128, path: Path = CALIBRATION_FILE) -> list[tuple[str, str]]:
    """(prompt name, text) pairs from a shipped calibration file (its first ``limit``; None: all)."""
    lines = path.read_text(encoding="utf-8").splitlines()[:limit]
    return [(row["prompt_name"], row["text"]) for row in map(json.loads, lines)]


# gettext catalogs of Debian packages (GPL/LGPL), translated into many scripts. Never glib20, gtk20 or
# gdk-pixbuf: the validation set (benchmarks/validation) is made of those.
_WIDE_DOMAINS = ("PackageKit", "shared-mime-info", "at-spi2-core", "Linux-PAM", "software-properties")
_WIDE_LANGUAGES = [
    "ru", "uk", "bg", "el", "he", "ar", "fa", "hi", "mr", "bn", "pa", "gu", "or", "ta", "te", "kn", "ml", "si",
    "th", "km", "ka", "hy", "zh_CN", "zh_TW", "ja", "ko", "de", "fr", "es", "pl", "tr", "vi", "cs", "fi",
]
_WIDE_CODE = ["textwrap", "shlex", "bisect", "heapq", "string", "calendar"]  # their sources (PSF license)
_LOCALE_MESSAGES = Path("/usr/share/locale")


def _catalog_lines(lang: str, chars: int) -> str:
    import gettext

    lines: list[str] = []
    for domain in _WIDE_DOMAINS:
        path = _LOCALE_MESSAGES / lang / "LC_MESSAGES" / f"{domain}.mo"
        if path.is_file():
            with path.open("rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog  # noqa: SLF001 - msgid -> msgstr
            lines += [v.strip() for k, v in sorted(catalog.items(), key=lambda kv: str(kv[0])) if k and isinstance(v, str) and v != k and len(v.strip()) > 8]
    rng = np.random.default_rng(len(lang) * 1000 + sum(map(ord, lang)))
    lines = [lines[i] for i in rng.permutation(len(lines))]
    out, size = [], 0
    for line in dict.fromkeys(lines):
        if size > chars:
            break
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)


def _generated_texts() -> list[tuple[str, str]]:
    """Logs, tables, repeated words and phrases, separators: seeded, unlike the validation set's."""
    rng = np.random.default_rng(7)
    level = ["INFO", "WARN", "ERROR", "DEBUG"]
    journal = "\n".join(
        f"2024-07-{rng.integers(1, 31):02d}T{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}:{rng.integers(0, 60):02d}+02:00 node{rng.integers(1, 9)} "
        f"kubelet[{rng.integers(900, 9000)}]: {level[rng.integers(4)]} pod=api-{rng.integers(1000, 9999)} "
        f"{['probe failed: HTTP 503', 'container restarted', 'pulled image registry.local/api:1.4.' + str(rng.integers(9)), 'OOMKilled'][rng.integers(4)]}"
        for _ in range(220))
    errors = "\n".join(
        f"[{['error', 'warn', 'notice'][rng.integers(3)]}] {rng.integers(1000, 9999)}#0: *{rng.integers(1, 99999)} upstream timed out "
        f"(110: Connection timed out) while reading response header from upstream, client: 10.0.{rng.integers(255)}.{rng.integers(255)}"
        for _ in range(120))
    csv = "\n".join(["sensor;timestamp;temperature_c;humidity_pct;battery_v"] + [
        f"S-{rng.integers(10, 99)};{1718000000 + 60 * i};{rng.normal(21, 4):.1f};{rng.uniform(20, 90):.0f};{rng.uniform(3.1, 4.2):.2f}" for i in range(250)])
    md = "\n".join(["| Land | Hauptstadt | Einwohner (Mio.) | Fläche (km²) |", "|:--|:--|--:|--:|"] + [
        f"| Region {i} | Stadt {rng.integers(100, 999)} | {rng.uniform(0.1, 90):.1f} | {rng.integers(1000, 900000)} |" for i in range(90)])
    texts = [("document", journal), ("document", errors), ("document", csv), ("document", md)]
    for word, count in (("error", 600), ("тест", 500), ("数据", 600), ("ok", 400), ("null", 300), ("لا", 400)):
        texts.append(("document", " ".join([word] * count)))
    texts.append(("document", " ".join(["Read more about our privacy policy and terms of use."] * 80)))
    texts.append(("document", "".join(["Все права защищены. "] * 150)))
    texts.append(("document", "\n".join(["-" * 72] * 200)))
    texts.append(("document", " ".join(f"{0.25 * i:g}" for i in range(1500))))
    texts.append(("query", "ok"))
    texts.append(("query", "weather"))
    return texts


def build_wide_calibration_texts() -> list[tuple[str, str]]:
    """The short calibration texts plus long and degenerate ones; deterministic on a given OS image."""
    import importlib

    texts = calibration_texts()
    for i, lang in enumerate(_WIDE_LANGUAGES):
        text = _catalog_lines(lang, 1500 if lang in ("zh_CN", "zh_TW", "ja", "ko") else 4000)
        if text:
            texts.append(("document", text))
    for name in _WIDE_CODE:
        source = Path(importlib.import_module(name).__file__).read_text(encoding="utf-8")
        texts.append(("document", source[:8000]))
    return texts + _generated_texts()


def build_calibration_texts(limit: int = 128) -> list[tuple[str, str]]:
    """Docstrings interleaved with multilingual lines, as found on this machine; deterministic."""
    docs, langs = _docstrings(), _locale_lines()
    rng = np.random.default_rng(0)
    docs = [docs[i] for i in rng.permutation(len(docs))][: limit * 3 // 4]
    langs = [langs[i] for i in rng.permutation(len(langs))][: limit - len(docs)]
    texts = [t for pair in zip(docs, langs) for t in pair] + docs[len(langs) :] + langs[len(docs) :]
    return [(_PROMPT_CYCLE[i % len(_PROMPT_CYCLE)], t) for i, t in enumerate(texts[:limit])]


class Tap(nn.Module):
    """Passes through to a Linear layer and reports its input."""

    def __init__(self, inner: nn.Module, report: Callable[[mx.array], None]):
        super().__init__()
        self.inner = inner
        self._report = report

    def __call__(self, x: mx.array) -> mx.array:
        self._report(x)
        return self.inner(x)


def token_ids(model: EmbeddingGemma, texts: list[tuple[str, str]], max_tokens: int) -> list[list[int]]:
    """Each (prompt name, text) as the model tokenizes it, cut to ``max_tokens`` with its ``<eos>`` kept."""
    out = []
    for prompt_name, text in texts:
        ids = model.tokenizer.encode([model.prompt_prefix(prompt_name if prompt_name in model.prompts else None, None) + text]).ids[0]
        out.append(ids[: max_tokens - 1] + ids[-1:])
    return out


def collect_hessians(
    model: EmbeddingGemma, texts: list[tuple[str, str]], max_tokens: int = 256, sample_tokens: int | None = None
) -> dict[str, np.ndarray]:
    """Sum of xᵀx over the tokens that reach each Linear layer of the transformer blocks.

    Texts run one at a time (up to ``max_tokens`` each) so that no padding token enters the statistics.
    ``sample_tokens`` bounds the cost of long texts: of a text longer than that, every k-th token's input
    is summed (k = ceil(length / sample_tokens)), weighted by k, so each text still counts by its length.
    Layers fed the same input (q/k/v, gate/up) share one product.
    """
    network = model.network
    linears = {p: m for p, m in network.named_modules() if is_linear(m) and p.startswith("model.layers.")}
    sums: dict[str, np.ndarray] = {}
    last: list = [None, None]  # the previous input and its product: q, k and v (gate and up) get the same one

    def report(path: str, x: mx.array) -> None:
        if last[0] is not x:
            # numpy's BLAS: MLX's CPU wheel on Linux links the reference BLAS, far slower for this product
            rows = np.asarray(x.reshape(-1, x.shape[-1]).astype(mx.float32))
            stride = -(-rows.shape[0] // sample_tokens) if sample_tokens else 1
            rows = rows[::stride]
            last[:] = [x, (rows.T @ rows).astype(np.float64) * stride]
        sums[path] = sums[path] + last[1] if path in sums else last[1].copy()

    network.update_modules(_unflatten({p: Tap(m, lambda x, p=p: report(p, x)) for p, m in linears.items()}))
    try:
        for ids in token_ids(model, texts, max_tokens):
            mx.eval(network(mx.array([ids]), mx.ones((1, len(ids)), dtype=mx.bool_)))
    finally:
        network.update_modules(_unflatten(linears))
        last.clear()
    return sums


def _unflatten(flat: dict[str, nn.Module]):
    from mlx.utils import tree_unflatten

    return tree_unflatten(list(flat.items()))


if __name__ == "__main__":
    with CALIBRATION_FILE.open("w", encoding="utf-8") as f:
        for prompt_name, text in build_calibration_texts():
            f.write(json.dumps({"prompt_name": prompt_name, "text": text}, ensure_ascii=False) + "\n")
    print(f"wrote {CALIBRATION_FILE}")
    with WIDE_CALIBRATION_FILE.open("w", encoding="utf-8") as f:
        for prompt_name, text in build_wide_calibration_texts():
            f.write(json.dumps({"prompt_name": prompt_name, "text": text}, ensure_ascii=False) + "\n")
    print(f"wrote {WIDE_CALIBRATION_FILE}")
