"""Embed a folder (or file) of Parquet or JSONL texts into one output file per input file, resumably.

What ``mlx-embedgemma embed-dataset`` runs. Input and output may be local paths or any URI pyarrow's
filesystems take (``s3://``, ``gs://``, ...). Every output file is written under a hidden temporary
name and moved into place when it is complete, so an output file that exists is complete: a rerun
skips the input files whose output exists and embeds the rest.

All pending files go through one Ray Data pipeline (one actor pool, loaded once); rows come back to
this process in input order and are written here, so the output passes through the driver.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .ray import embed_dataset

READERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".ndjson": "json"}
OUTPUT_FORMATS = ("parquet", "jsonl")
PATH_COLUMN = "path"  # what Ray's readers name the column of each row's file (include_paths=True)
FAILURES_KEPT = 100  # failed rows listed in the report; the output files hold all of them


@dataclass
class FilesReport:
    embedded: list[str] = field(default_factory=list)   # output files written by this run
    skipped: list[str] = field(default_factory=list)    # output files already complete
    rows: int = 0
    failed: int = 0
    failures: list[tuple[str, object, str]] = field(default_factory=list)  # (input file, id, error), the first FAILURES_KEPT


def embed_files(
    input: str, output: str, model: str | Path, *, text_column: str = "text", id_column: str | None = "id",
    prompt_name: str | None = "document", dim: int | None = None, dtype: str = "float32", actors: int = 1,
    threads: int | None = None, batch_size: int = 256, output_format: str = "parquet",
    log: Callable[[str], None] = lambda message: None,
) -> FilesReport:
    """Embed the text column of every Parquet/JSONL file at ``input`` into ``output`` (a folder), skipping complete outputs."""
    import ray.data

    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be parquet or jsonl, got {output_format!r}")
    in_fs, files, kind = input_files(input)
    out_fs, out_root = filesystem(output)
    targets = output_paths(input, files, out_root, output_format)
    report = FilesReport()
    pending = []
    for src in files:
        if out_fs.get_file_info(targets[src]).type == pafs.FileType.File:
            report.skipped.append(targets[src])
        else:
            pending.append(src)
    if report.skipped:
        log(f"{len(report.skipped)} of {len(files)} output files are complete: skipping their inputs")
    if not pending:
        return report

    read = ray.data.read_parquet if kind == "parquet" else ray.data.read_json
    options = {} if kind == "parquet" else {"file_extensions": None}  # pyarrow reads JSON Lines
    ds = read(pending, filesystem=in_fs, include_paths=True, **options)
    vectors = embed_dataset(ds, model, text_column=text_column, id_column=id_column, prompt_name=prompt_name, dim=dim,
                            dtype=dtype, actors=actors, threads=threads, batch_size=batch_size, keep_columns=[PATH_COLUMN],
                            added_columns=[PATH_COLUMN])

    def done(target: str) -> None:
        report.embedded.append(target)
        log(f"wrote {target}")

    files_out = _Outputs(out_fs, pending, targets, output_format, done)
    for batch in vectors.iter_batches(batch_format="pyarrow", batch_size=None):
        for src, rows in _runs(batch):
            _count(src, rows, report, id_column)
            files_out.write(src, rows)
    files_out.finish()
    return report


def _runs(batch: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """(input file, its rows without the path column) for each run of consecutive rows from one file."""
    paths = batch[PATH_COLUMN].to_pylist()
    start = 0
    while start < len(paths):
        end = start + 1
        while end < len(paths) and paths[end] == paths[start]:
            end += 1
        yield paths[start], batch.slice(start, end - start).drop_columns([PATH_COLUMN])
        start = end


def _count(src: str, rows: pa.Table, report: FilesReport, id_column: str | None) -> None:
    report.rows += rows.num_rows
    errors = rows["error"]
    if errors.null_count == len(errors):
        return
    ids = rows[id_column].to_pylist() if id_column else [None] * rows.num_rows
    for i, error in enumerate(errors.to_pylist()):
        if error is not None:
            report.failed += 1
            if len(report.failures) < FAILURES_KEPT:
                report.failures.append((src, ids[i], error))


class _Outputs:
    """The output files of ``sources``, in order, each written under a hidden partial name and moved into place when
    the next file's rows start (or at ``finish``). A killed run leaves only partial files, which the next run
    overwrites: an output file that exists is complete.
    """

    def __init__(self, fs: pafs.FileSystem, sources: list[str], targets: dict[str, str], output_format: str,
                 done: Callable[[str], object]):
        self.fs, self.targets, self.output_format, self.done = fs, targets, output_format, done
        self.queue, self.source, self.schema = iter(sources), None, None

    def write(self, source: str, rows: pa.Table) -> None:
        self.schema = rows.schema
        while self.source != source:  # files before ``source`` that gave no rows come out empty
            self._next()
            if self.source is None:
                raise RuntimeError(f"rows of {source} arrived after its output file was closed: input order was not kept")
        if self.parquet is not None:
            self.parquet.write_table(rows)
        else:
            self.stream.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.to_pylist()).encode("utf-8"))

    def finish(self) -> None:
        if self.schema is None:
            raise ValueError("the input files hold no rows")
        while self.source is not None:
            self._next()

    def _next(self) -> None:
        if self.source is not None:
            if self.parquet is not None:
                self.parquet.close()
            self.stream.close()
            self.fs.move(self.partial, self.targets[self.source])
            self.done(self.targets[self.source])
        self.source = next(self.queue, None)
        if self.source is None:
            return
        parent, name = self.targets[self.source].rsplit("/", 1)
        self.fs.create_dir(parent, recursive=True)
        self.partial = f"{parent}/.{name}.partial"
        self.stream = self.fs.open_output_stream(self.partial)
        self.parquet = pq.ParquetWriter(self.stream, self.schema) if self.output_format == "parquet" else None


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a local path or a URI (s3://, gs://, file://, ...)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), Path(uri).expanduser().resolve().as_posix()


def input_files(uri: str) -> tuple[pafs.FileSystem, list[str], str]:
    """The input's filesystem, its data files in name order (hidden ones skipped) and their one format."""
    fs, root = filesystem(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri} does not exist")
    if info.type == pafs.FileType.File:
        files = [root]
    else:
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        files = sorted(i.path for i in found if i.type == pafs.FileType.File
                       and not any(p.startswith((".", "_")) for p in PurePosixPath(i.path).relative_to(root).parts))
    kinds = {READERS.get(PurePosixPath(f).suffix.lower()) for f in files}
    if not files or None in kinds:
        odd = sorted(f for f in files if PurePosixPath(f).suffix.lower() not in READERS)[:3]
        raise ValueError(f"{uri}: expected Parquet (.parquet) or JSONL (.jsonl, .json, .ndjson) files"
                         + (f", found {', '.join(odd)}" if odd else ", found none"))
    if len(kinds) > 1:
        raise ValueError(f"{uri} mixes Parquet and JSONL files: give one format per run (a folder or file of each)")
    return fs, files, kinds.pop()


def output_paths(input: str, files: list[str], out_root: str, output_format: str) -> dict[str, str]:
    """Each input file's output: the same relative path under ``out_root``, with the output format's suffix."""
    _, in_root = filesystem(input)
    single = len(files) == 1 and files[0] == in_root
    targets = {}
    for f in files:
        relative = PurePosixPath(PurePosixPath(f).name if single else PurePosixPath(f).relative_to(in_root))
        targets[f] = f"{out_root}/{relative.with_suffix('.' + output_format)}"
    clashes = len(set(targets.values())) < len(targets)
    if clashes:
        raise ValueError(f"{input} holds files that differ only by suffix (e.g. a.json and a.jsonl); they would share an output file")
    return targets
