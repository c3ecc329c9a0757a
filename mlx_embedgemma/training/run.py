"""`mlx-embedgemma finetune` as a function: read BASE and the pairs, mine negatives, train, export, clean up."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlx_embedgemma.convert.converter import ConversionReport
from mlx_embedgemma.convert.output import check_target

from . import checkpoint
from .base import load_base
from .blas import slow_blas_hint
from .data import read_examples
from .export import export
from .mining import mine_hard_negatives
from .trainer import Progress, Report, Settings, Trainer


@dataclass
class Result:
    training: Report
    export: ConversionReport


def finetune(
    base: str | Path,
    train_file: str | Path,
    output: str | Path,
    settings: Settings,
    *,
    valid_file: str | Path | None = None,
    hard_negatives: int | None = None,
    recipe: str | None = "q4-mixed",
    resume: bool = False,
    force: bool = False,
    log: Callable[[str], None] = lambda _: None,
    on_progress: Callable[[Progress], None] = lambda _: None,
) -> Result:
    out = Path(output).expanduser()
    check_target(out, force)  # before any work: a run must not end unable to write its result
    examples = read_examples(train_file)
    valid = read_examples(valid_file) if valid_file else None
    trainer = Trainer(load_base(base), settings)
    hint = slow_blas_hint()
    if hint:
        log(hint)
    layers = trainer.network.args.num_hidden_layers
    scope = "all blocks" if settings.train_layers is None else f"top {settings.train_layers} of {layers} blocks"
    log(f"{len(examples)} training pairs; {trainer.trainable:,} trainable parameters ({'LoRA rank ' + str(settings.lora_rank) if settings.lora_rank else 'full'}, {scope}, {settings.dtype})")
    if hard_negatives:
        log(f"mining {hard_negatives} hard negatives per anchor with the base model")
        examples = mine_hard_negatives(examples, trainer.embed_texts, hard_negatives)
    checkpoints = checkpoint.checkpoint_folder(out)
    report = trainer.train(examples, checkpoints, resume=resume, valid=valid, on_progress=on_progress, log=log)
    if report.valid_before and report.valid_after:
        log(f"valid before: {report.valid_before.describe()}")
        log(f"valid after:  {report.valid_after.describe()}")
    result = export(trainer.base, out, recipe, force=force, log=log)
    shutil.rmtree(checkpoints, ignore_errors=True)  # the model is written; the run cannot be resumed any more
    return Result(report, result)


def progress_line(p: Progress, width: int = 24) -> str:
    done = int(width * p.step / p.total) if p.total else width
    return f"[{'#' * done}{'.' * (width - done)}] step {p.step}/{p.total}  loss {p.loss:.4f}  {p.steps_per_s:.2f} steps/s  {p.tokens_per_s:,.0f} tokens/s"
