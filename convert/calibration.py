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

from mlx_embedgemma import backend
from mlx_embedgemma.backend import is_linear
from mlx_embedgemma.embedder import EmbeddingGemma
from mlx_embedgemma.model import EmbeddingGemmaModel, TransformerBlock

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


class _Tap(nn.Module):
    """Passes through to a Linear layer and reports its input."""

    def __init__(self, inner: nn.Module, report: Callable[[mx.array], None]):
        super().__init__()
        self.inner = inner
        self._report = report

    def __call__(self, x: mx.array) -> mx.array:
        self._report(x)
        return self.inner(x)


class _Hessians:
    """Sums of xᵀx per tapped layer; ``sample_tokens`` as in ``collect_hessians``."""

    def __init__(self, sample_tokens: int | None):
        self.sums: dict[str, np.ndarray] = {}
        self.sample_tokens = sample_tokens
        self._last: list = [None, None]  # the previous input and its product: q, k and v (gate and up) get the same one

    def taps(self, linears: dict[str, nn.Module]) -> dict[str, _Tap]:
        return {p: _Tap(m, lambda x, p=p: self._report(p, x)) for p, m in linears.items()}

    def _report(self, path: str, x: mx.array) -> None:
        if self._last[0] is not x:
            # numpy's BLAS: MLX's CPU wheel on Linux links the reference BLAS, far slower for this product
            rows = np.asarray(x.reshape(-1, x.shape[-1]).astype(mx.float32))
            stride = -(-rows.shape[0] // self.sample_tokens) if self.sample_tokens else 1
            rows = rows[::stride]
            self._last[:] = [x, (rows.T @ rows).astype(np.float64) * stride]
        self.sums[path] = self.sums[path] + self._last[1] if path in self.sums else self._last[1].copy()

    def close(self) -> dict[str, np.ndarray]:
        self._last.clear()
        return self.sums


def token_ids(model: EmbeddingGemma, texts: list[tuple[str, str]], max_tokens: int) -> list[list[int]]:
    """Each text under its prompt, cut to ``max_tokens`` keeping <eos> last."""
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
    hessians = _Hessians(sample_tokens)
    network.update_modules(_unflatten(hessians.taps(linears)))
    try:
        for ids in token_ids(model, texts, max_tokens):
            mx.eval(network(mx.array([ids]), mx.ones((1, len(ids)), dtype=mx.bool_)))
    finally:
        network.update_modules(_unflatten(linears))
    return hessians.close()


def gptq_block_by_block(
    network: EmbeddingGemmaModel, originals: dict[str, mx.array], ids: list[list[int]], *, sample_tokens: int | None = None,
    clip_grid: int = 0, act_order: bool = False, log: Callable[[str], None] = lambda _: None,
) -> int:
    """GPTQ on each block in turn, with statistics of the inputs the blocks below it, already quantized, give it.

    ``network`` holds the quantized layout (round-to-nearest, from ``precision.quantize``) and ``originals``
    its float32 weights. Block i's statistics come from its float32 weights run on the output of the
    quantized table and blocks 0..i-1, so its rounding also absorbs the error those pass up (GPTQ's
    sequential order); ``collect_hessians`` instead feeds every block the float network's activations.
    The quantized blocks run with float32 activations whatever the runtime later uses, so the statistics
    do not depend on this machine's integer kernels. Returns the layers re-rounded.
    """
    from . import gptq

    encoder, args = network.model, network.args
    float_plan = backend.choose(quantized=False, compute_dtype=mx.float32, fuse_blocks=False)
    quantized_plan = backend.choose(quantized=True, compute_dtype=mx.float32, fuse_blocks=False)
    valid = [mx.ones((1, len(row)), dtype=mx.bool_) for row in ids]
    states = [encoder.embed(mx.array([row]), mx.float32) for row in ids]
    mx.eval(states)
    changed = 0
    for i, block in enumerate(encoder.layers):
        prefix = f"model.layers.{i}."
        weights = {k[len(prefix) :]: v for k, v in originals.items() if k.startswith(prefix)}
        twin = TransformerBlock(args, args.layer_types[i])
        twin.load_weights(list(weights.items()), strict=True)
        backend.apply(float_plan, twin)
        hessians = _Hessians(sample_tokens)
        twin.update_modules(_unflatten(hessians.taps({p: m for p, m in twin.named_modules() if is_linear(m)})))
        for h, v in zip(states, valid):
            mx.eval(twin(h, v))
        del twin
        changed += gptq.apply(block, weights, hessians.close(), clip_grid=clip_grid, act_order=act_order)
        replaced = backend.apply(quantized_plan, block)
        states = [block(h, v) for h, v in zip(states, valid)]
        mx.eval(states)
        backend.restore(block, replaced)
        log(f"GPTQ block {i + 1}/{len(encoder.layers)}")
    return changed


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
