"""The public model object: texts in, normalized Matryoshka embeddings out (sentence-transformers' API shape)."""

from __future__ import annotations

import ctypes
import sys
import threading
import warnings
from contextlib import contextmanager
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from .model import EmbeddingGemmaModel
from .tokenizer import Tokenizer

DEFAULT_BATCH_SIZE = 32


def default_max_batch_tokens() -> int:
    """Padded tokens per forward pass: bounds activation memory whatever the input lengths.

    On the CPU, throughput is flat from 1,024 to 4,096 tokens per pass (1.81 vs 1.84 docs/s, 4-bit,
    2 cores) while MLX's peak grows from 129 to 229 MB, so the CPU takes the small budget. GPUs need
    bigger passes to fill up.
    """
    return 1024 if mx.default_device() == mx.cpu else 8192


class TruncationWarning(UserWarning):
    """Some texts were longer than the model's maximum sequence length and were cut."""


class EmbeddingGemma:
    def __init__(
        self,
        network: EmbeddingGemmaModel,
        tokenizer: Tokenizer,
        config: dict[str, Any],
        path: Path,
        compute_dtype: mx.Dtype,
        truncate_dim: int | None = None,
    ):
        self.network = network
        self.tokenizer = tokenizer
        self.config = config
        self.path = path
        self.compute_dtype = compute_dtype
        self.prompts: dict[str, str] = dict(config.get("prompts", {}))
        self.default_prompt_name: str | None = config.get("default_prompt_name")
        self.dims: tuple[int, ...] = tuple(config.get("matryoshka_dims", [network.args.embedding_dim]))
        self.max_seq_length: int = tokenizer.max_length
        self.truncate_dim = self.check_dim(truncate_dim) if truncate_dim else None
        # MLX arrays and streams are not safe to drive from several threads at once.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        from .precision import describe

        return f"EmbeddingGemma({str(self.path)!r}, {describe(self.config)}, dims={self.dims})"

    @property
    def streams_weights(self) -> bool:
        """True when the blocks' matrices are read from the file per call (see ``load``)."""
        return self.network.model.eval_each_layer

    @property
    def embedding_dim(self) -> int:
        return self.truncate_dim or self.network.args.embedding_dim

    def encode(
        self,
        texts: str | Iterable[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        dim: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_tokens: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed texts: float32 (n, dim), L2-normalized; a single string gives a 1-D vector.

        ``prompt_name`` picks one of ``self.prompts`` (``prompt`` gives the prefix string itself); with
        neither, the folder's default prompt is used, if it has one. ``dim`` is a Matryoshka size.
        ``progress`` is called with the number of texts finished after each forward pass.
        """
        single = isinstance(texts, str)
        items = [texts] if single else _as_texts(texts)
        prefix = self.prompt_prefix(prompt_name, prompt)
        dim = self.check_dim(dim) if dim is not None else self.embedding_dim
        if max_batch_tokens is None:
            max_batch_tokens = default_max_batch_tokens()
        if batch_size < 1 or max_batch_tokens < 1:
            raise ValueError("batch_size and max_batch_tokens must be positive")
        encoded = self.tokenizer.encode([prefix + t for t in items])
        if encoded.truncated:
            cut = encoded.truncated
            warnings.warn(
                f"{len(cut)} of {len(items)} texts were longer than {self.max_seq_length} tokens (prompt included) "
                f"and were truncated, as the reference implementation does; indices: {cut[:10]}"
                f"{' ...' if len(cut) > 10 else ''}",
                TruncationWarning,
                stacklevel=2,
            )
        full = self._embed_ids(encoded.ids, batch_size, max_batch_tokens, progress)
        out = truncate(full, dim)
        return out[0] if single else out

    def encode_query(self, texts: str | Iterable[str], **kwargs: Any) -> np.ndarray:
        return self.encode(texts, prompt_name=kwargs.pop("prompt_name", "query"), **kwargs)

    def encode_document(self, texts: str | Iterable[str], **kwargs: Any) -> np.ndarray:
        return self.encode(texts, prompt_name=kwargs.pop("prompt_name", "document"), **kwargs)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix (len(a), len(b)); 1-D inputs count as one row."""
        a, b = np.atleast_2d(np.asarray(a, np.float32)), np.atleast_2d(np.asarray(b, np.float32))
        if a.shape[1] != b.shape[1]:
            raise ValueError(f"cannot compare {a.shape[1]}-d with {b.shape[1]}-d embeddings: encode both with the same dim")
        return _unit(a) @ _unit(b).T

    def count_tokens(self, texts: Sequence[str], prompt_name: str | None = None, prompt: str | None = None) -> list[int]:
        """Tokens each text takes in the model, prompt, `<bos>` and `<eos>` included, after truncation."""
        prefix = self.prompt_prefix(prompt_name, prompt)
        return [len(ids) for ids in self.tokenizer.encode([prefix + t for t in _as_texts(texts)]).ids]

    def prompt_prefix(self, prompt_name: str | None, prompt: str | None) -> str:
        if prompt is not None:
            if prompt_name is not None:
                raise ValueError("give either prompt_name or prompt, not both")
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
            return prompt
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        if name is None:
            return ""
        if name not in self.prompts:
            raise ValueError(f"unknown prompt_name {name!r}; known names: {', '.join(sorted(self.prompts))}")
        return self.prompts[name]

    def check_dim(self, dim: int) -> int:
        if dim not in self.dims or isinstance(dim, bool):
            raise ValueError(f"dim must be one of {', '.join(map(str, self.dims))} (Matryoshka sizes), got {dim!r}")
        return int(dim)

    def _embed_ids(
        self, ids: list[list[int]], batch_size: int, max_tokens: int, progress: Callable[[int], None] | None
    ) -> np.ndarray:
        out = np.empty((len(ids), self.network.args.embedding_dim), np.float32)
        lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
        for batch in plan_batches(lengths, batch_size, max_tokens):
            width = int(lengths[batch].max())
            tokens = np.zeros((len(batch), width), np.int32)
            for row, i in enumerate(batch):
                tokens[row, : lengths[i]] = ids[i]
            valid = np.arange(width)[None, :] < lengths[batch][:, None]
            with self._lock, _lean_buffer_cache():
                emb = self.network(mx.array(tokens), mx.array(valid), self.compute_dtype)
                out[batch] = np.array(emb.astype(mx.float32))
            if progress is not None:
                progress(len(batch))
        return out


def _malloc_trim() -> Callable[[int], int] | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # a C library without it (musl)
        return None


_MALLOC_TRIM = _malloc_trim()


@contextmanager
def _lean_buffer_cache() -> Iterator[None]:
    """Keep freed buffers from adding to peak memory, during one forward pass and across many.

    On the CPU, MLX caches freed buffers (32 MB by default) on top of malloc, which already reuses
    freed memory: without the cache, peak RSS is 30 MB lower at the same speed (150 vs 179 MB for 16
    documents of 128 tokens, 171 vs 202 MB for one of 2,048, 4-bit model). glibc then keeps the freed
    heap, fragmented, and the peak crept up pass after pass (177 -> 180 MB over 8 documents of 2,048
    tokens, 192 MB after 50); malloc_trim after each pass holds it flat and RSS between passes drops
    from 137 to 108 MB. GPU buffers are costly to allocate, so there the cache works during the pass
    and is emptied after it, or buffers of every padded shape would pile up.
    """
    if mx.default_device() != mx.cpu:
        try:
            yield
        finally:
            mx.clear_cache()
        return
    previous = mx.set_cache_limit(0)
    mx.clear_cache()
    try:
        yield
    finally:
        mx.set_cache_limit(previous)
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)


def plan_batches(lengths: np.ndarray, batch_size: int, max_tokens: int) -> Iterator[np.ndarray]:
    """Indices grouped longest-first so padding is small and the first pass is the largest one.

    A batch holds at most ``batch_size`` texts and at most ``max_tokens`` padded tokens; a single text
    longer than ``max_tokens`` still gets a batch of its own.
    """
    order = np.argsort(-lengths, kind="stable")
    start = 0
    while start < len(order):
        width = int(lengths[order[start]])
        count = max(1, min(batch_size, max_tokens // max(width, 1)))
        yield order[start : start + count]
        start += count


def truncate(embeddings: np.ndarray, dim: int) -> np.ndarray:
    """Matryoshka: keep the first ``dim`` values and L2-normalize again."""
    if dim == embeddings.shape[-1]:
        return embeddings
    return _unit(np.ascontiguousarray(embeddings[..., :dim]))


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _as_texts(texts: Iterable[str]) -> list[str]:
    if isinstance(texts, (bytes, bytearray)):
        raise TypeError("texts must be a str or an iterable of str, got bytes: decode it first (e.g. .decode('utf-8'))")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"texts must be a str or an iterable of str, got {type(texts).__name__}") from None
    for i, t in enumerate(items):
        if not isinstance(t, str):
            hint = "decode bytes first" if isinstance(t, (bytes, bytearray)) else "pass only strings (use '' for empty)"
            raise TypeError(f"texts[{i}] is {type(t).__name__}, not str: {hint}")
    return items
