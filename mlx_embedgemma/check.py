"""`mlx-embedgemma check MODEL`: does this machine compute what the converter computed?

The converter stores a few probe texts in the model folder (``probes.json``) with their embeddings from
the source weights run as a float32 network, and the cosine the folder must reach (its bar: the lowest
cosine the converted folder reached on the converting machine, less a margin for another device's
arithmetic). ``check`` embeds the probes on every device MLX has here (the CPU, and Metal or CUDA when
present) and reports, per device, the cosine to the reference (mean and min), the time and MLX's peak
memory; it fails when a device falls below the bar. It is the check for machines the project cannot
run on: the first Metal run tells whether the Metal path is right.
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from . import __version__
from .embedder import EmbeddingGemma, TruncationWarning

PROBES_FILE = "probes.json"
PROBES_FORMAT = 1
# Below the folder's own conversion-time minimum, what another device's arithmetic may lose: float32
# sums in another order move a cosine by ~1e-6; a wrong kernel or a broken weight costs far more.
DEVICE_MARGIN = 0.002


class ProbesMissingError(FileNotFoundError):
    """The folder was made without probes (by an older converter, or another tool)."""


@dataclass(frozen=True)
class Probes:
    texts: list[tuple[str | None, str]]  # (prompt name, None: the folder's default; text)
    reference: np.ndarray  # (n, full dim) float32, L2-normalized
    bar: float


@dataclass(frozen=True)
class DeviceResult:
    device: str  # "cpu", "metal" or "cuda"
    name: str  # the hardware, as MLX reports it
    cosines: list[float]
    seconds: float  # embedding the probes once, after a warm-up call
    peak_mb: float  # MLX's peak memory while loading and embedding

    def passed(self, bar: float) -> bool:
        return bool(np.all(np.isfinite(self.cosines))) and min(self.cosines) >= bar


def embed_probes(model: EmbeddingGemma, texts: Sequence[tuple[str | None, str]]) -> np.ndarray:
    """Full-size embeddings of (prompt name, text) pairs, one ``encode`` call per prompt."""
    out = np.empty((len(texts), model.network.args.embedding_dim), np.float32)
    rows_of: dict[str | None, list[int]] = {}
    for i, (name, _) in enumerate(texts):
        rows_of.setdefault(name, []).append(i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # a model with a short limit cuts the long probe
        for name, rows in rows_of.items():
            out[rows] = model.encode([texts[i][1] for i in rows], prompt_name=name)
    return out


def write_probes(folder: Path, texts: Sequence[tuple[str | None, str]], reference: np.ndarray,
                 converted_cosines: Sequence[float]) -> float:
    """Store the probes, their float32 reference and the folder's bar in ``folder``; returns the bar."""
    bar = round(float(min(converted_cosines)) - DEVICE_MARGIN, 6)
    record = {
        "format": PROBES_FORMAT,
        "reference_from": "the source weights as a float32 network, on the converting machine's CPU",
        "cosine_bar": bar,
        "converted_cosines": [round(float(c), 7) for c in converted_cosines],
        "probes": [{"prompt_name": name, "text": text, "reference": [round(float(v), 8) for v in vector]}
                   for (name, text), vector in zip(texts, reference)],
    }
    (folder / PROBES_FILE).write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    return bar


def read_probes(folder: Path) -> Probes:
    path = Path(folder).expanduser() / PROBES_FILE
    if not path.parent.is_dir():
        raise FileNotFoundError(f"model folder {path.parent} does not exist")
    if not path.is_file():
        raise ProbesMissingError(
            f"{path.parent} has no {PROBES_FILE}: it was converted by an older mlx-embedgemma or another tool, so "
            "there is nothing to check against. Convert the checkpoint again with `mlx-embedgemma convert` to get one"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") != PROBES_FORMAT:
            raise ValueError(f"format {record.get('format')!r}, this version reads {PROBES_FORMAT}")
        texts = [(p["prompt_name"], p["text"]) for p in record["probes"]]
        reference = np.array([p["reference"] for p in record["probes"]], np.float32)
        bar = float(record["cosine_bar"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is damaged ({e}); convert the checkpoint again") from None
    return Probes(texts, reference, bar)


def available_devices() -> list[str]:
    """The CPU always; Metal or CUDA where this MLX has them and the machine too."""
    devices = ["cpu"]
    if mx.metal.is_available():
        devices.append("metal")
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        devices.append("cuda")
    return devices


def check_device(folder: Path, probes: Probes, device: str) -> DeviceResult:
    """Load the folder with ``device`` as MLX's default and embed the probes; the default is restored."""
    from .loading import load

    previous = mx.default_device()
    mx.set_default_device(mx.cpu if device == "cpu" else mx.gpu)
    try:
        name = str(mx.device_info().get("device_name", "")).strip() or platform.processor() or "unknown"
        mx.clear_cache()
        mx.reset_peak_memory()
        model = load(folder)
        embed_probes(model, probes.texts[:1])  # first-call setup (kernels, caches) is not the probes' time
        start = time.perf_counter()
        vectors = embed_probes(model, probes.texts)
        seconds = time.perf_counter() - start
        peak_mb = mx.get_peak_memory() / 2**20
    finally:
        mx.set_default_device(previous)
    dim = probes.reference.shape[1]
    cosines = np.sum(vectors[:, :dim] * probes.reference, axis=1)
    return DeviceResult(device, name, [float(c) for c in cosines], seconds, peak_mb)


def run(folder: Path, devices: Sequence[str] | None = None) -> tuple[Probes, list[DeviceResult]]:
    folder = Path(folder).expanduser()
    probes = read_probes(folder)
    return probes, [check_device(folder, probes, d) for d in (devices or available_devices())]


def report(folder: Path, probes: Probes, results: Sequence[DeviceResult]) -> list[str]:
    """The lines `check` prints: what ran where, then one row per device and a verdict."""
    lines = [
        f"mlx-embedgemma {__version__}, mlx {mx.__version__}, Python {platform.python_version()}, "
        f"{platform.platform(terse=True)} {platform.machine()}",
        f"model {folder}: {len(probes.texts)} probe texts, cosine bar {probes.bar:.4f} (float32 reference from the source)",
        f"{'device':<7} {'name':<32} {'cos mean':>9} {'cos min':>9} {'seconds':>8} {'peak MB':>8}  result",
    ]
    for r in results:
        lines.append(f"{r.device:<7} {r.name[:32]:<32} {np.mean(r.cosines):>9.6f} {min(r.cosines):>9.6f} "
                     f"{r.seconds:>8.3f} {r.peak_mb:>8.1f}  {'ok' if r.passed(probes.bar) else 'BELOW THE BAR'}")
    failed = [r.device for r in results if not r.passed(probes.bar)]
    lines.append(f"FAILED on {', '.join(failed)}: this device does not compute what the converter computed"
                 if failed else "all devices agree with the reference")
    return lines
