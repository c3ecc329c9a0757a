"""What a benchmark record was measured on, so records from different machines can sit side by side."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import mlx_embedgemma
import mlx.core as mx

SCHEMA = 1


def backend(device: mx.Device) -> str:
    if device.type == mx.cpu:
        return "cpu"
    return "metal" if mx.metal.is_available() else "cuda"


def device_name(device: mx.Device) -> str:
    """Apple chip, GPU name or CPU model, as the hardware reports it."""
    with mx.stream(device):
        name = str(mx.device_info().get("device_name", "")).strip()
    if device.type == mx.cpu:
        name = _cpu_model() or name
    return name or "unknown"


def _cpu_model() -> str | None:
    if sys.platform == "darwin":
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, check=False)
        return out.stdout.strip() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


@lru_cache(maxsize=None)
def git_commit() -> str | None:
    """The checkout's commit (with "-dirty" if it has local changes outside benchmarks/results); outside one,
    $MLX_EMBEDGEMMA_COMMIT or None."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        # Records appended by earlier runs are not a change to what is measured.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                ":(exclude,top)benchmarks/results"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        # A copy without .git (a remote machine's): whoever copied it may say which commit it is.
        return os.environ.get("MLX_EMBEDGEMMA_COMMIT")
    return commit[:12] + ("-dirty" if dirty else "")


@lru_cache(maxsize=None)
def model_hash(path: Path) -> str:
    """First 16 hex digits of the sha256 of the weights file: the identity of a model folder's numbers."""
    digest = hashlib.sha256()
    with (Path(path) / "model.safetensors").open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def kernel(plan) -> str:
    """What runs the network's matmuls: the native kernel and its instruction set, or MLX's own."""
    if plan is None:
        return "unknown"
    if plan.kernels != "native":
        return f"mlx-{plan.backend}"
    return f"native-{plan.isa}" + (f"-int{plan.activations}" if plan.activations != 32 else "")


def fingerprint(device: mx.Device, threads: int, model_path: Path | None = None, storage: str | None = None,
                plan=None) -> dict:
    """Versions, commit, backend, device, OS, cores, kernel and plan, threads, model hash and storage, date."""
    return {
        "schema": SCHEMA,
        "package": mlx_embedgemma.__version__,
        "git_commit": git_commit(),
        "mlx": mx.__version__,
        "backend": backend(device),
        "device_name": device_name(device),
        "os": platform.platform(terse=True),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "kernel": kernel(plan),
        "plan": plan.describe() if plan is not None else None,
        "threads": threads,
        "model_hash": model_hash(model_path) if model_path else None,
        # Folders from random_model.py: their speed and memory are the real model's, their outputs are not.
        "random_weights": bool(model_path and json.loads((Path(model_path) / "config.json").read_text()).get("random_weights")),
        "storage": storage,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
