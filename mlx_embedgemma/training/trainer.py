"""The training loop: no-duplicates batches, MatryoshkaLoss(MultipleNegativesRankingLoss), cached or not,
AdamW with linear warmup and decay, atomic checkpoints every few steps, and a resumable schedule.

Everything a run does is fixed by its settings and seed: the batches of each epoch come from the seed,
so a resumed run replays exactly the steps an uninterrupted one would have taken.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from mlx_embedgemma import precision

from . import checkpoint
from .base import Base
from .batches import Tokens, embed, embed_all, mini_batches, tokenize
from .data import Example, check_lengths
from .evaluation import Scores, evaluate
from .frozen import FrozenBottom
from .lora import apply_lora, scale_lora
from .losses import cached_value_and_grad, matryoshka, multiple_negatives_ranking
from .sampler import no_duplicate_batches

COLUMNS = ("anchor", "document")
# Default learning rates: sentence-transformers' recipe for full fine-tuning; LoRA's adapters start at
# zero and need larger steps (mlx-lm's and PEFT's usual range).
FULL_LEARNING_RATE, LORA_LEARNING_RATE = 2e-5, 2e-4


class SettingsError(ValueError):
    """An option has a value training cannot use; the message names it and the fix."""


@dataclass(frozen=True)
class Settings:
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 32
    mini_batch_size: int | None = None  # GradCache when set
    learning_rate: float | None = None  # None: FULL_LEARNING_RATE, or LORA_LEARNING_RATE with LoRA
    matryoshka_dims: tuple[int, ...] = (768, 512, 256, 128)
    max_length: int = 256
    lora_rank: int | None = None
    train_layers: int | None = None  # only the top K blocks (and the head) train; None: all of them
    dtype: str = "float32"
    seed: int = 0
    anchor_prompt: str = "query"
    document_prompt: str = "document"
    train_embeddings: bool = False
    # Keep the base's Dense head: on a small domain set, training it moved the whole embedding geometry and
    # cost quality outside the domain (benchmarks/finetune.py's records); the blocks alone forget far less.
    freeze_head: bool = False
    warmup_ratio: float = 0.1
    checkpoint_every: int = 50
    # The run ends at base + tuned_weight * (tuned - base), WiSE-FT's weight-space ensemble (Wortsman et al.,
    # 2022): below 1 it gives back part of the in-domain gain for less forgetting outside the domain.
    tuned_weight: float = 1.0

    def check(self, embedding_dim: int, layers: int) -> None:
        if self.dtype == "float16":
            raise SettingsError("--dtype float16 is refused: this model's activations overflow float16 (values near 8e5); use bfloat16 or float32")
        if self.dtype not in ("float32", "bfloat16"):
            raise SettingsError(f"--dtype must be float32 or bfloat16, got {self.dtype!r}")
        positive = {"epochs": self.epochs, "batch-size": self.batch_size, "checkpoint-every": self.checkpoint_every}
        positive.update({k: v for k, v in {"max-steps": self.max_steps, "mini-batch-size": self.mini_batch_size, "lora-rank": self.lora_rank}.items() if v is not None})
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise SettingsError(f"--{name} must be a positive integer, got {value!r}")
        if self.train_layers is not None:
            if not isinstance(self.train_layers, int) or not 0 <= self.train_layers <= layers:
                raise SettingsError(f"--train-layers must be a number of blocks in 0..{layers}, got {self.train_layers!r}")
            if self.train_embeddings:
                raise SettingsError("--train-embeddings trains the bottom of the network, which --train-layers freezes: pass one of them")
            if self.freeze_head and self.train_layers == 0:
                raise SettingsError("--freeze-head with --train-layers 0 leaves only the final norm to train: pass --train-layers 1 or more, or drop --freeze-head")
            if self.lora_rank and self.train_layers == 0:
                raise SettingsError("--lora-rank with --train-layers 0 trains nothing (LoRA adapts blocks, not the head): pass --train-layers 1 or more, or drop --lora-rank")
        if self.batch_size < 2:
            raise SettingsError("--batch-size must be at least 2: in-batch negatives need other pairs in the batch")
        if self.max_length < 3:
            raise SettingsError(f"--max-length must be at least 3 (<bos>, a token, <eos>), got {self.max_length}")
        bad = [d for d in self.matryoshka_dims if not 0 < d <= embedding_dim]
        if not self.matryoshka_dims or bad:
            raise SettingsError(f"--matryoshka-dims must list sizes in 1..{embedding_dim}, got {list(self.matryoshka_dims)}")
        if not (isinstance(self.tuned_weight, (int, float)) and 0 < self.tuned_weight <= 1):
            raise SettingsError(f"--tuned-weight must be in (0, 1] (1 keeps the tuned weights), got {self.tuned_weight!r}")
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise SettingsError(f"--learning-rate must be a positive number, got {self.learning_rate}")

    @property
    def rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return LORA_LEARNING_RATE if self.lora_rank else FULL_LEARNING_RATE


@dataclass
class Progress:
    step: int
    total: int
    loss: float
    steps_per_s: float
    tokens_per_s: float


@dataclass
class Report:
    steps: int
    seconds: float
    tokens: int
    trainable_parameters: int
    losses: list[float] = field(default_factory=list)
    cache_seconds: float = 0.0  # --train-layers: computing the frozen blocks' output, before the first step
    valid_before: Scores | None = None
    valid_after: Scores | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def interpolate(start: dict[str, mx.array], end: dict[str, mx.array], a: float) -> dict:
    """The parameter tree start + a * (end - start), over ``end``'s (flat) names."""
    return tree_unflatten([(k, start[k] + a * (v - start[k])) for k, v in end.items()])


class Trainer:
    def __init__(self, base: Base, settings: Settings):
        args = base.network.args
        settings.check(args.embedding_dim, args.num_hidden_layers)
        self.base, self.settings = base, settings
        self.network = base.network
        self.dtype = precision.DTYPES[settings.dtype]
        self.prefixes = {c: self._prefix(p) for c, p in zip(COLUMNS, (settings.anchor_prompt, settings.document_prompt))}
        mx.random.seed(settings.seed)  # LoRA's initial A matrices
        frozen = 0 if settings.train_layers is None else args.num_hidden_layers - settings.train_layers
        if settings.lora_rank:
            self.trainable = apply_lora(self.network, settings.lora_rank, first_layer=frozen)
        else:
            self.network.unfreeze()
            if not settings.train_embeddings:
                self.network.model.embed_tokens.freeze()
            for layer in self.network.model.layers[:frozen]:
                layer.freeze()
            if settings.freeze_head:  # LoRA leaves the head frozen anyway
                for layer in self.network.dense:
                    layer.freeze()
            self.trainable = sum(v.size for _, v in tree_flatten(self.network.trainable_parameters()))
        if self.dtype != mx.float32:
            precision.cast_floats(self.network, self.dtype)
        # What --tuned-weight moves back toward; LoRA needs no copy (its update is linear in its scale).
        keep = settings.tuned_weight != 1 and not settings.lora_rank
        self.start = dict(tree_flatten(self.network.trainable_parameters())) if keep else None
        self.loss = matryoshka(multiple_negatives_ranking, settings.matryoshka_dims)
        self.bottom = None if settings.train_layers is None else FrozenBottom(self.network, frozen, self.dtype)

    def _prefix(self, prompt: str) -> str:
        """A prompt name of the model (``query``), else the literal prompt text ("" for none)."""
        return self.base.config.get("prompts", {}).get(prompt, prompt)

    def tokenize(self, texts: Sequence[str], column: str) -> tuple[list[list[int]], list[int]]:
        return tokenize(self.base.tokenizer, self.prefixes[column], texts, self.settings.max_length)

    def embed_texts(self, texts: list[str], column: str) -> np.ndarray:
        """Embeddings without gradients (evaluation, mining)."""
        rows = self.tokenize(texts, column)[0]
        return embed_all(lambda t: embed(self.network, t, self.dtype), rows, self.network.args.embedding_dim)

    def evaluate(self, examples: Sequence[Example]) -> Scores:
        return evaluate(examples, self.embed_texts, self.loss, self.settings.matryoshka_dims)

    def prepare(self, examples: Sequence[Example], what: str) -> list[tuple[list[int], ...]]:
        """Token ids of every row's texts (anchor, positive, negatives), with a warning for over-long ones."""
        anchors, anchor_lengths = self.tokenize([e.anchor for e in examples], "anchor")
        width = 1 + len(examples[0].negatives)
        docs, doc_lengths = self.tokenize([t for e in examples for t in e.texts[1:]], "document")
        rows = [(anchors[i], *docs[i * width : (i + 1) * width]) for i in range(len(examples))]
        lengths = [(anchor_lengths[i], *doc_lengths[i * width : (i + 1) * width]) for i in range(len(examples))]
        check_lengths(examples, lengths, self.settings.max_length, what)
        return rows

    def schedule(self, examples: Sequence[Example]) -> list[list[int]]:
        """Every step's rows, epoch after epoch, cut at --max-steps."""
        steps = []
        for epoch in range(self.settings.epochs):
            steps += no_duplicate_batches(examples, self.settings.batch_size, self.settings.seed, epoch)
        return steps[: self.settings.max_steps] if self.settings.max_steps else steps

    def value_and_grad(self, rows: Sequence[tuple[list[int], ...]]) -> tuple[mx.array, dict, int]:
        """Loss and gradients for one batch, and its count of real tokens."""
        anchors = [r[0] for r in rows]
        candidates = [r[1 + k] for k in range(len(rows[0]) - 1) for r in rows]  # positives, then each negative column
        size = self.settings.mini_batch_size
        a, c = mini_batches(anchors, size), mini_batches(candidates, size)
        tokens = sum(t.count for t in a + c)
        if size:
            value, grads = cached_value_and_grad(self.network, self._embed, self.loss, a, c)
        else:
            def loss(first: Tokens, second: Tokens) -> mx.array:
                return self.loss(self._embed(first), self._embed(second))

            value, grads = nn.value_and_grad(self.network, loss)(a[0], c[0])
        return value, grads, tokens

    def _embed(self, tokens: Tokens) -> mx.array:
        return self.bottom.embed(tokens) if self.bottom else embed(self.network, tokens, self.dtype)

    def settings_record(self, train_file_rows: int) -> dict:
        return {**asdict(self.settings), "matryoshka_dims": list(self.settings.matryoshka_dims), "rows": train_file_rows, "base": self.base.source}

    def train(
        self,
        examples: Sequence[Example],
        checkpoints: Path,
        *,
        resume: bool = False,
        valid: Sequence[Example] | None = None,
        on_progress: Callable[[Progress], None] = lambda _: None,
        stop_after: int | None = None,
        log: Callable[[str], None] = lambda _: None,
    ) -> Report:
        """Train on ``examples``; checkpoints go to ``checkpoints``. ``stop_after`` ends the run early after that
        many steps of this call, as an interruption would (for tests and time-boxed runs)."""
        rows = self.prepare(examples, "training data")
        steps = self.schedule(examples)
        warmup = int(self.settings.warmup_ratio * len(steps))
        rate = self.settings.rate
        schedule = optim.join_schedules(
            [optim.linear_schedule(0.0, rate, max(warmup, 1)), optim.linear_schedule(rate, 0.0, max(len(steps) - warmup, 1))],
            [max(warmup, 1)],
        ) if warmup else optim.linear_schedule(rate, 0.0, max(len(steps), 1))
        optimizer = optim.AdamW(learning_rate=schedule, weight_decay=0.0)
        optimizer.init(self.network.trainable_parameters())
        settings = self.settings_record(len(examples))
        start = 0
        if resume:
            saved = checkpoint.load(checkpoints, settings)
            self.network.update(tree_unflatten(saved.parameters))
            optimizer.state = saved.optimizer_state
            start = saved.step
        elif (checkpoints / checkpoint.STATE_FILE).exists():
            raise checkpoint.CheckpointError(
                f"{checkpoints} holds a checkpoint of an earlier run: pass --resume to continue it, or remove the folder to start again"
            )
        report = Report(steps=start, seconds=0.0, tokens=0, trainable_parameters=self.trainable)
        if valid:
            report.valid_before = self.evaluate(valid)
        if self.bottom:
            began = time.perf_counter()
            self.bottom.add(text for row in rows for text in row)
            report.cache_seconds = time.perf_counter() - began
            log(f"frozen blocks' output of {len(self.bottom.states)} texts kept ({self.bottom.tokens:,} tokens, "
                f"{self.bottom.tokens * self.network.args.hidden_size * 4 / 1e6:.0f} MB) in {report.cache_seconds:.0f} s")
        began = time.perf_counter()
        end = len(steps) if stop_after is None else min(len(steps), start + stop_after)
        for step in range(start, end):
            value, grads, tokens = self.value_and_grad([rows[i] for i in steps[step]])
            optimizer.update(self.network, grads)
            mx.eval(self.network.parameters(), optimizer.state, value)
            report.steps, report.tokens = step + 1, report.tokens + tokens
            report.losses.append(float(value.item()))
            report.seconds = time.perf_counter() - began
            on_progress(Progress(step + 1, len(steps), report.losses[-1], (step + 1 - start) / report.seconds, report.tokens / report.seconds))
            if (step + 1) % self.settings.checkpoint_every == 0 or step + 1 == end:
                checkpoint.save(checkpoints, step + 1, self.network.trainable_parameters(), optimizer.state, settings)
        if report.steps == len(steps):
            self._weigh_tuned()
            if valid:
                report.valid_after = self.evaluate(valid)
        return report

    def _weigh_tuned(self) -> None:
        """Move the finished run to base + tuned_weight * (tuned - base); the checkpoints keep the tuned weights."""
        a = self.settings.tuned_weight
        if a == 1:
            return
        if self.settings.lora_rank:
            scale_lora(self.network, a)
        else:
            self.network.update(interpolate(self.start, dict(tree_flatten(self.network.trainable_parameters())), a))
        mx.eval(self.network.parameters())
