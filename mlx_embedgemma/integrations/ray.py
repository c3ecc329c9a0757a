"""Embed a Ray Dataset's text column with a pool of actors, each holding one loaded model.

    import ray
    from mlx_embedgemma.integrations.ray import embed_dataset

    ds = ray.data.read_parquet("corpus/")                       # columns: id, text
    vectors = embed_dataset(ds, "models/embeddinggemma-q4", prompt_name="document", dim=256, actors=4)
    vectors.write_parquet("vectors/")                           # columns: id, embedding, error

Needs Ray Data (``pip install 'mlx-embedgemma[ray]'``). On a cluster, every node needs this package and
the model folder at the same path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import ray
import ray.data

from ..inputs import check_text

if TYPE_CHECKING:
    from ray.data import Dataset

# How vectors are stored: int8 keeps round(127 * v) of each (unit-length) vector's values.
DTYPES = {"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8()}
# Every threading knob a worker's numeric libraries read at start-up (this package, OpenMP, OpenBLAS,
# Accelerate), so each actor uses its share of the cores and no more.
THREAD_VARS = ("MLX_EMBEDGEMMA_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def embed_dataset(
    ds: "Dataset",
    model: str | Path,
    *,
    text_column: str = "text",
    id_column: str | None = "id",
    prompt_name: str | None = None,
    dim: int | None = None,
    dtype: str = "float32",
    actors: int = 1,
    threads: int | None = None,
    batch_size: int = 256,
    keep_columns: Sequence[str] = (),
    added_columns: Sequence[str] = (),
    embedding_column: str = "embedding",
    error_column: str = "error",
) -> "Dataset":
    """A lazy Dataset of ``id_column`` (and ``keep_columns``), ``embedding_column`` and ``error_column``.

    Rows come out in input order, one per input row. ``embedding_column`` is a fixed-size list of ``dim``
    values (the model's full size by default) in ``dtype`` (float32, float16, or int8 holding
    round(127 * v)); a row whose text cannot be embedded (null, not a string, invalid Unicode) keeps its
    id, gets a null embedding and says why in ``error_column`` (null for every other row).

    ``actors`` processes each load ``model`` (a folder path, seen by every node) once and embed
    ``batch_size`` rows at a time; each gets ``threads`` cores (default: the cluster's CPUs divided
    by ``actors``), set as its BLAS and runtime thread count before the model loads; between them the
    actors reserve all of Ray's CPUs but one, which Ray Data's read and split tasks use.
    Prompt name, dim and column names are checked here, before anything runs (``added_columns``: columns
    the caller's reader added, such as a file path, left out of the error message's list of columns).
    """
    from ..loading import load

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if actors < 1 or batch_size < 1 or (threads is not None and threads < 1):
        raise ValueError("actors, batch_size and threads must be at least 1")
    path = Path(model).expanduser().resolve()
    m = load(path)
    m.prompt_prefix(prompt_name, None)
    dim = m.check_dim(dim) if dim is not None else m.embedding_dim
    _check_columns(ds, [text_column, *([id_column] if id_column else []), *keep_columns], added=added_columns)
    taken = {text_column, id_column, *keep_columns} & {embedding_column, error_column}
    if taken:
        raise ValueError(f"output column names {sorted(taken)} are input columns too: choose another embedding_column/error_column")

    if not ray.is_initialized():
        ray.init()
    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    threads = threads or max(1, cpus // actors)
    # Ray Data's read and split tasks need a CPU of their own (light next to the model's work): were the
    # actors to reserve every CPU, those tasks would wait for ever. So the actors reserve all but one.
    reserved = min(threads, max(cpus - 1, 0) / actors)
    out = ds.repartition(target_num_rows_per_block=batch_size).map_batches(
        EmbedBatch,
        fn_constructor_kwargs=dict(
            model=str(path), text_column=text_column, pass_columns=[c for c in (id_column, *keep_columns) if c],
            prompt_name=prompt_name, dim=dim, dtype=dtype, embedding_column=embedding_column, error_column=error_column,
        ),
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=reserved,
        runtime_env={"env_vars": {name: str(threads) for name in THREAD_VARS}},
    )
    # Actors finish blocks out of order; ids must come back in the order they went in.
    out.context.execution_options.preserve_order = True
    return out


def _check_columns(ds: "Dataset", wanted: list[str], added: Sequence[str]) -> None:
    schema = ds.schema()
    have = [c for c in (schema.names if schema is not None else []) if c not in added]
    missing = [c for c in wanted if c not in have and c not in added]
    if missing:
        raise ValueError(f"the input has no column {', '.join(map(repr, missing))} (its columns: {', '.join(have) or 'none'}); "
                         "name its text and id columns (text_column= and id_column=, or --text-column and --id-column)")


class EmbedBatch:
    """The actor: loads the model once, then turns batches of texts into vectors (``map_batches`` callable class)."""

    def __init__(self, model: str, text_column: str, pass_columns: list[str], prompt_name: str | None, dim: int,
                 dtype: str, embedding_column: str, error_column: str):
        from ..loading import load

        self.model = load(model)
        self.text_column, self.pass_columns = text_column, pass_columns
        self.prompt_name, self.dim, self.dtype = prompt_name, dim, dtype
        self.embedding_column, self.error_column = embedding_column, error_column

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        texts = batch[self.text_column]
        errors = [_row_error(t, self.text_column) for t in texts]
        ok = [i for i, e in enumerate(errors) if e is None]
        vectors = np.zeros((len(texts), self.dim), np.float32)
        if ok:
            vectors[ok] = self.model.encode([texts[i] for i in ok], prompt_name=self.prompt_name, dim=self.dim)
        columns = {c: pa.array(batch[c]) for c in self.pass_columns}
        columns[self.embedding_column] = vector_column(vectors, self.dtype, failed=[e is not None for e in errors])
        columns[self.error_column] = pa.array(errors, pa.string())
        return pa.table(columns)


def _row_error(text: object, name: str) -> str | None:
    try:
        check_text(text, name)
    except (TypeError, ValueError) as e:
        return str(e)
    return None


def vector_column(vectors: np.ndarray, dtype: str, failed: Sequence[bool]) -> pa.FixedSizeListArray:
    """Rows of ``vectors`` as a fixed-size list column of ``dtype``, null where ``failed``."""
    if dtype == "int8":
        values = np.rint(np.clip(vectors, -1.0, 1.0) * 127).astype(np.int8)
    else:
        values = vectors.astype(dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), DTYPES[dtype]), vectors.shape[1],
                                             mask=pa.array(failed, pa.bool_()))
