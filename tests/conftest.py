from __future__ import annotations

import json
import os
from pathlib import Path

import mlx_embedgemma  # noqa: F401
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMBEDGEMMA_SHARED", REPO.parent / "shared"))
REAL_SOURCE = Path(os.environ.get("EMBEDGEMMA_SOURCE", Path.home() / ".cache" / "embeddinggemma-300m"))
NO_REAL_MODEL = (
    f"the real google/embeddinggemma-300m checkpoint is not at {REAL_SOURCE}; "
    "run ../shared/tools/fetch-embeddinggemma.sh (or set EMBEDGEMMA_SOURCE) to run these tests"
)


def run_forked(target, args, timeout: float = 60):
    """Run target(*args, queue) in a child made by fork(); returns its exit code (None if it hung and was
    killed) and the queue it reported on."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=target, args=(*args, queue))
    child.start()
    child.join(timeout)
    if child.exitcode is None:
        child.kill()
    return child.exitcode, queue


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory) -> Path:
    from tiny_model import build_tiny_source

    return build_tiny_source(tmp_path_factory.mktemp("tiny"))


def _convert(tmp_path_factory, source: Path, name: str, **options) -> Path:
    from mlx_embedgemma.convert import convert

    out = tmp_path_factory.mktemp("converted") / name
    convert(source, out, **options)
    return out


@pytest.fixture(scope="session")
def tiny_f32(tmp_path_factory, tiny_source) -> Path:
    return _convert(tmp_path_factory, tiny_source, "tiny-f32", quantize=False)


@pytest.fixture(scope="session")
def tiny_matryoshka(tmp_path_factory, tiny_f32) -> Path:
    """The tiny float32 model with Matryoshka sizes SMALL_DIMS (tiny_model.py), so dims have a choice.

    Shared by many test files: treat it as read-only (copy it to change anything).
    """
    import shutil

    from tiny_model import SMALL_DIMS

    folder = Path(shutil.copytree(tiny_f32, tmp_path_factory.mktemp("matryoshka") / "tiny-matryoshka"))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["matryoshka_dims"] = SMALL_DIMS
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_q4(tmp_path_factory, tiny_source) -> Path:
    # Group 32: the tiny model's 96-wide MLP does not split into groups of 64.
    return _convert(tmp_path_factory, tiny_source, "tiny-q4", bits=4, group_size=32)


@pytest.fixture(scope="session")
def real_source() -> Path:
    if not (REAL_SOURCE / "model.safetensors").is_file():
        pytest.skip(NO_REAL_MODEL)
    return REAL_SOURCE


@pytest.fixture(scope="session")
def real_f32(tmp_path_factory, real_source) -> Path:
    return _convert(tmp_path_factory, real_source, "real-f32", quantize=False)


@pytest.fixture(scope="session")
def real_q4(tmp_path_factory, real_source) -> Path:
    return _convert(tmp_path_factory, real_source, "real-q4")


@pytest.fixture(scope="session")
def real_q8(tmp_path_factory, real_source) -> Path:
    return _convert(tmp_path_factory, real_source, "real-q8", bits=8)


@pytest.fixture(scope="session")
def reference() -> tuple[list[dict], np.ndarray]:
    rows = [json.loads(line) for line in (SHARED / "reference" / "public.jsonl").read_text(encoding="utf-8").splitlines()]
    return rows, np.load(SHARED / "reference" / "public.npy")


def encode_rows(model, rows: list[dict]) -> np.ndarray:
    """Embed reference rows, each with its own prompt, in input order."""
    out = np.empty((len(rows), model.network.args.embedding_dim), np.float32)
    for name in {r["prompt_name"] for r in rows}:
        idx = [i for i, r in enumerate(rows) if r["prompt_name"] == name]
        out[idx] = model.encode([rows[i]["text"] for i in idx], prompt_name=name)
    return out
