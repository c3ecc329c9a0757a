"""Embedding rows read on demand from the weights file, so the table never becomes resident.

The token embedding table is two thirds of the model (201 M of 308 M parameters; 113 MB at 4 bits),
yet a batch only needs the rows of the tokens it contains. Each lookup reads just those rows from
``model.safetensors`` with pread: they land in the page cache, which the kernel may reclaim at any time,
never in the process's resident set, so RSS does not creep up as texts with new tokens arrive, on Linux
or macOS. The Linear layers that the plan reads in place use a memory map of the same file; their pages
stay mapped, since every pass reads all of them (faulting 57 MB back in per pass cost more than the
matmuls of a short query).
"""

from __future__ import annotations

import json
import mmap
import os
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
        self._fd = os.open(path, os.O_RDONLY)  # for rows(); closed in __del__

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def rows(self, name: str, index: np.ndarray) -> np.ndarray:
        """Copies of the given rows of a 2-D tensor, read with pread: never through the map, so no page of
        the table enters the process's resident set, whatever the kernel maps around a fault (Linux maps
        whole large folios of a freshly written file) and whether or not it honours MADV_DONTNEED (macOS
        takes it as advice)."""
        info = self.header[name]
        if info["dtype"] not in _DTYPES or len(info["shape"]) != 2:
            raise ValueError(f"{self.path}: tensor {name} ({info['dtype']}, {info['shape']}) cannot be row-mapped")
        start, end = info["data_offsets"]
        rows, _ = info["shape"]
        width = (end - start) // rows
        wanted, where = np.unique(np.asarray(index, np.int64), return_inverse=True)
        if wanted.size and not 0 <= wanted[0] <= wanted[-1] < rows:
            raise IndexError(f"{name}: row ids must lie in 0..{rows - 1}")
        out = np.empty((wanted.size, width), np.uint8)  # as bytes: safetensors does not align tensors
        base = self._data_start + start
        for i, row in enumerate(wanted.tolist()):
            if os.preadv(self._fd, [out[i]], base + row * width) != width:
                raise OSError(f"{self.path}: short read of {name} row {row}; the file changed or was truncated")
        return out[where.reshape(-1)].view(_DTYPES[info["dtype"]])

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

    def release(self, names: list[str]) -> None:
        """Let the mapped pages of these tensors leave the resident set."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        for name in names:
            start, end = (self._data_start + o for o in self.header[name]["data_offsets"])
            first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages of this tensor only
            last = end // mmap.PAGESIZE * mmap.PAGESIZE
            if last > first:
                self._map.madvise(mmap.MADV_DONTNEED, first, last - first)


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
