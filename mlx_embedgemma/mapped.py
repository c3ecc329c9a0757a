"""Embedding rows read on demand from the weights file, so the table never becomes resident.

The token embedding table is two thirds of the model (201 M of 308 M parameters; 113 MB at 4 bits),
yet a batch only needs the rows of the tokens it contains. The table's tensors are memory-mapped from
``model.safetensors``; each lookup copies the rows it needs, and after each forward pass the backend
plan tells the kernel the mapped pages may go (MADV_DONTNEED on clean, file-backed pages: on Linux they
stay in the page cache but leave the process's resident set), so RSS does not creep up as texts with
new tokens arrive. The same maps serve the Linear layers that the plan reads in place.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

_DTYPES = {"U32": np.uint32, "F16": np.float16, "BF16": np.uint16, "F32": np.float32}


def read_header(f, size: int) -> tuple[dict, int]:
    """A safetensors file's JSON header and where its data starts; ValueError if the header is broken."""
    (length,) = struct.unpack("<Q", f.read(8))
    if length > min(size - 8, 100 << 20):
        raise ValueError("header length beyond the file")
    return json.loads(f.read(length)), 8 + length


class SafetensorsMap:
    """Read-only memory map of a safetensors file, giving numpy views of its tensors without copying."""

    def __init__(self, path: Path):
        self.path = path
        with path.open("rb") as f:
            self.header, self._data_start = read_header(f, path.stat().st_size)
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def rows(self, name: str, index: np.ndarray) -> np.ndarray:
        """Copies of the given rows of a 2-D tensor; only their pages are read."""
        info = self.header[name]
        if info["dtype"] not in _DTYPES or len(info["shape"]) != 2:
            raise ValueError(f"{self.path}: tensor {name} ({info['dtype']}, {info['shape']}) cannot be row-mapped")
        start, end = info["data_offsets"]
        rows, _ = info["shape"]
        # As bytes: safetensors does not align tensors, and numpy copies a whole unaligned array to index it.
        table = np.frombuffer(self._map, np.uint8, end - start, self._data_start + start).reshape(rows, -1)
        return np.take(table, index, axis=0).view(_DTYPES[info["dtype"]])

    def view(self, name: str) -> np.ndarray:
        """A whole tensor as a numpy view of the map (no copy; may be unaligned). bfloat16 shows as uint16."""
        info = self.header[name]
        start, end = info["data_offsets"]
        dtype = np.uint16 if info["dtype"] == "BF16" else _DTYPES[info["dtype"]]
        return np.frombuffer(self._map, dtype, (end - start) // np.dtype(dtype).itemsize, self._data_start + start).reshape(info["shape"])

    def tensor(self, name: str) -> mx.array:
        """A copy of a whole tensor, in MLX."""
        info = self.header[name]
        start, end = info["data_offsets"]
        raw = np.frombuffer(self._map, np.uint8, end - start, self._data_start + start)
        array = mx.array(raw.view(_DTYPES[info["dtype"]]).reshape(info["shape"]))  # MLX copies, unaligned is fine
        return array.view(mx.bfloat16) if info["dtype"] == "BF16" else array

    def is_bfloat16(self, name: str) -> bool:
        return self.header[name]["dtype"] == "BF16"

    def release(self) -> None:
        if hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)


@dataclass
class _Rows:  # held outside MLX's parameter tree on purpose: these are not arrays MLX should own
    file: SafetensorsMap
    names: dict[str, str]


class MappedEmbedding(nn.Module):
    """Drop-in for ``nn.Embedding`` / ``nn.QuantizedEmbedding`` whose table stays on disk."""

    def __init__(self, file: SafetensorsMap, prefix: str, like: nn.Module):
        super().__init__()
        names = {k: f"{prefix}.{k}" for k in ("weight", "scales", "biases") if k in like}
        self._rows = _Rows(file, names)
        self.quantized = isinstance(like, nn.QuantizedEmbedding)
        if self.quantized:
            self.group_size, self.bits, self.mode = like.group_size, like.bits, like.mode

    def _gather(self, key: str, ids: np.ndarray) -> mx.array:
        name = self._rows.names[key]
        rows = mx.array(self._rows.file.rows(name, ids))
        return rows.view(mx.bfloat16) if self._rows.file.is_bfloat16(name) else rows

    def __call__(self, ids: mx.array) -> mx.array:
        flat = np.asarray(ids).reshape(-1)
        weight = self._gather("weight", flat)
        if self.quantized:
            biases = self._gather("biases", flat) if "biases" in self._rows.names else None
            weight = mx.dequantize(weight, self._gather("scales", flat), biases, self.group_size, self.bits, mode=self.mode)
        return weight.reshape(*ids.shape, -1)
