"""Training state on disk, written atomically: an interrupted run resumes where it stopped.

One folder beside the output (``DIR.training``): the trainable parameters and the optimizer's state in
``state.safetensors``, the step and the run's settings in ``state.json``. Each save writes both under
temporary names, fsyncs them, then renames: the JSON last, and it names the weights file it belongs
to, so a kill at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from mlx_embedgemma.durable import sync_path

STATE_FILE = "state.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or belongs to a run with other settings."""


@dataclass
class Checkpoint:
    step: int
    parameters: list[tuple[str, mx.array]]
    optimizer_state: dict


def checkpoint_folder(output: Path) -> Path:
    return output.with_name(output.name + ".training")


def save(folder: Path, step: int, parameters: dict, optimizer_state: dict, settings: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"param:{k}": v for k, v in tree_flatten(parameters)}
    arrays.update({f"optim:{k}": v for k, v in tree_flatten(optimizer_state) if isinstance(v, mx.array)})
    weights = f"state-{step}.safetensors"
    tmp = folder / f".tmp-{weights}"  # MLX appends .safetensors to any other suffix
    mx.save_safetensors(str(tmp), arrays)
    sync_path(tmp)
    os.replace(tmp, folder / weights)
    state = folder / f".{STATE_FILE}.tmp"
    state.write_text(json.dumps({"step": step, "weights": weights, "settings": settings}, indent=1), encoding="utf-8")
    sync_path(state)
    previous = _read_state(folder).get("weights") if (folder / STATE_FILE).is_file() else None
    os.replace(state, folder / STATE_FILE)
    sync_path(folder)
    if previous and previous != weights:
        (folder / previous).unlink(missing_ok=True)


def load(folder: Path, settings: dict[str, Any]) -> Checkpoint:
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"--resume: no checkpoint in {folder}; run without --resume to start training")
    state = _read_state(folder)
    saved = state.get("settings", {})
    changed = sorted(k for k in settings.keys() | saved.keys() if settings.get(k) != saved.get(k))
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} then, {settings.get(k)!r} now" for k in changed[:4])
        raise CheckpointError(
            f"--resume: the checkpoint in {folder} was made with other settings ({detail}); "
            "resume with the same options, or remove the folder to start again"
        )
    try:
        arrays = mx.load(str(folder / state["weights"]))
    except (KeyError, RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(f"--resume: {folder} is damaged ({e}); remove it to start again") from None
    parameters = [(k.removeprefix("param:"), v) for k, v in arrays.items() if k.startswith("param:")]
    optim = [(k.removeprefix("optim:"), v) for k, v in arrays.items() if k.startswith("optim:")]
    return Checkpoint(int(state["step"]), parameters, tree_unflatten(optim))


def _read_state(folder: Path) -> dict:
    try:
        return json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / STATE_FILE} is damaged ({e}); remove {folder} to start again") from None

