"""Embedding a stream of texts into a file that a killed run can continue: the logic behind `embed --resume`.

JSONL output goes out one whole line per text as soon as its vector exists, and is flushed to the disk
after every chunk; `.npy` output is written all at once or not at all. A resumed run keeps the whole
chunks already written, checks that the last kept line is what this model, prompt and input give, and
appends the rest, so the file ends up byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

from .durable import flush_to_disk, sync_path
from .embedder import DEFAULT_CHUNK_SIZE, EmbeddingGemma
from .inputs import check_text

# Texts read and embedded per step: the unit a resumed run keeps or redoes.
CHUNK = DEFAULT_CHUNK_SIZE


class StreamError(ValueError):
    """The input or the output file cannot be used as asked; the message says why and what to do."""


def embed_to_file(model: EmbeddingGemma, texts: Iterable[str], output: Path | None, *, prompt_name: str | None,
                  dim: int, batch_size: int, resume: bool = False, show: Callable[[Iterator], Iterator] = iter,
                  log: Callable[[str], None] = lambda message: None) -> tuple[int, int]:
    """Embed ``texts`` into ``output`` (.npy, or JSONL; None: JSONL on stdout). Returns (written, resumed after).

    ``show`` wraps the stream of vectors (a progress bar); ``log`` gets notes for the user.
    """
    check_output(output, resume)
    source = iter(texts)
    done = 0
    if resume and output.exists():
        done, last, end, lines = completed(output, dim)
        check_resume_point(model, source, output, done, last, prompt_name, dim)
        if output.stat().st_size > end:  # only now that the file is known to be this run's
            os.truncate(output, end)
            log(f"{output}: kept the first {done} of {lines} complete lines (whole chunks of {CHUNK})")
    vectors = show(model.encode_iter(source, prompt_name=prompt_name, dim=dim, batch_size=batch_size, chunk_size=CHUNK))
    if output is not None and output.suffix == ".npy":
        rows = list(vectors)
        save_npy(output, np.stack(rows) if rows else np.zeros((0, dim), np.float32))
        return len(rows), done
    return write_jsonl(vectors, output, done), done


def check_output(output: Path | None, resume: bool) -> None:
    """Refuse, before any work, to resume what cannot be resumed."""
    if resume and (output is None or output.suffix == ".npy"):
        raise StreamError("--resume continues a JSONL --output file; give --output FILE.jsonl")


def write_jsonl(vectors: Iterator, output: Path | None, start: int) -> int:
    """Each line goes out in one write() as soon as its vector exists: a kill can only cut between lines.

    A file is flushed to the disk after every chunk, the unit `--resume` keeps: a power cut loses at
    most the chunk in progress, not lines the resumed run would trust.
    """
    f = output.open("ab" if start else "wb", buffering=0) if output else None
    sink = f or sys.stdout.buffer
    count = 0
    try:
        for count, row in enumerate(vectors, 1):
            line = json.dumps({"index": start + count - 1, "embedding": [round(float(v), 7) for v in row]}) + "\n"
            sink.write(line.encode("utf-8"))
            sink.flush()
            if f is not None and (start + count) % CHUNK == 0:
                flush_to_disk(f.fileno())
        if f is not None:
            flush_to_disk(f.fileno())
    finally:
        if f is not None:
            f.close()
    return count


def save_npy(output: Path, matrix: np.ndarray) -> None:
    """All or nothing: a killed run leaves the previous file (or none), never a truncated matrix."""
    tmp = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            np.save(f, matrix)
            f.flush()
            flush_to_disk(f.fileno())
        os.replace(tmp, output)
        sync_path(output.absolute().parent)
    finally:
        tmp.unlink(missing_ok=True)


def completed(path: Path, dim: int) -> tuple[int, list[float] | None, int, int]:
    """What to keep of a JSONL output: (texts, the last kept vector, bytes, complete lines in the file).

    Only whole chunks are kept: the resumed run then embeds the same batches as an uninterrupted one, so
    the file ends up byte-identical to it (an incomplete last line goes with the partial chunk).
    """
    count, kept, end, last = 0, 0, 0, None
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                break
            try:
                record = json.loads(raw)
                index, vector = record["index"], record["embedding"]
            except (ValueError, KeyError, TypeError):
                raise StreamError(
                    f"{path}, line {n} is not an `embed` record; refusing to resume (choose another --output)"
                ) from None
            if index != count:
                raise StreamError(
                    f"{path}, line {n} has index {index}, expected {count}: not the output of one `embed` run; refusing to resume"
                )
            if not isinstance(vector, list) or len(vector) != dim:
                raise StreamError(
                    f"{path} holds {len(vector) if isinstance(vector, list) else '?'}-d embeddings, this run makes {dim}-d: "
                    "resume with the same --dim, model and --prompt-name"
                )
            count += 1
            if count % CHUNK == 0:
                kept, end, last = count, f.tell(), vector
    return kept, last, end, count


def check_resume_point(model: EmbeddingGemma, source: Iterator[str], output: Path, done: int, last: list[float] | None,
                       prompt_name: str | None, dim: int) -> None:
    """Skip the ``done`` texts already embedded, and check the last of them embeds to the stored vector."""
    seen, text = 0, None
    for seen, text in enumerate(itertools.islice(source, done), 1):
        pass
    if seen < done:
        raise StreamError(f"{output} holds {done} embeddings but the input has only {seen} texts: it belongs to another input")
    if done:
        now = model.encode([text], prompt_name=prompt_name, dim=dim)[0]
        # Stored values are rounded to 7 decimals; batch composition moves them by ~1e-7.
        if np.max(np.abs(now - np.asarray(last, np.float32))) > 1e-4:
            raise StreamError(
                f"{output}: line {done} is not what text {done - 1} embeds to now, so it was written with another model, "
                "prompt or input; refusing to append (use the same options, or start a new --output)"
            )


def checked_args(texts: Iterable[str]) -> Iterator[str]:
    """Texts given as command-line arguments, each checked as it is read."""
    for i, text in enumerate(texts, 1):
        try:
            check_text(text, f"argument {i}")
        except (TypeError, ValueError) as e:
            raise StreamError(str(e)) from None
        yield text


def read_texts(stream: IO[str]) -> Iterator[str]:
    """Texts from a file: one per line, or the 'text' field of each JSONL (.jsonl, .ndjson) record."""
    name = getattr(stream, "name", "input")
    jsonl = name.endswith((".jsonl", ".ndjson")) if isinstance(name, str) else False
    try:
        for n, line in enumerate(stream, 1):
            line = line.rstrip("\r\n")
            if jsonl:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    line = record["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise StreamError(f"{name}, line {n}: expected a JSON object with a 'text' field") from None
                if not isinstance(line, str):
                    raise StreamError(f"{name}, line {n}: 'text' must be a string")
            check_text(line, f"{name}, line {n}")
            yield line
    except UnicodeDecodeError as e:
        # Decoding runs ahead in blocks, so the line is unknown.
        raise StreamError(f"{name} is not valid UTF-8 ({e.reason}); convert the file to UTF-8") from None
    except StreamError:
        raise
    except ValueError as e:  # a lone surrogate, e.g. a JSON "\\ud800" escape
        raise StreamError(str(e)) from None
