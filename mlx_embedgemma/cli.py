"""The `mlx-embedgemma` command: convert, embed, serve, index, search, bench, info."""

from __future__ import annotations

import itertools
import json
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from . import _blas, __version__
from .inputs import check_text
from .search import DEFAULT_EXTENSIONS

# Texts read and embedded per step when embedding a stream: output is written after each.
CHUNK = 256


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlx-embedgemma")
def main() -> None:
    """EmbeddingGemma-300m on MLX: convert checkpoints, embed texts, inspect the setup."""


@main.command()
@click.argument("source")
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--recipe", default=None, help="Quantization recipe: q4-mixed (default), q4, q4-gptq, q8.")
@click.option("--bits", type=click.Choice(["4", "8"]), default=None, help="Every matrix at this width instead of a recipe.")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default=None, help="With --bits (default 64).")
@click.option("--no-quantize", is_flag=True, help="Keep full-precision weights (see --dtype).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default=None, help="Weight dtype with --no-quantize.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists (only once the new folder is complete).")
@click.option("--layout", type=click.Choice(["mlx-embedgemma", "mlx-community"]), default="mlx-embedgemma", show_default=True,
              help="mlx-community: the mlx-embeddings layout (Hugging Face config.json, dense.0/dense.1 in "
                   "model.safetensors) that other MLX tools load; this package loads both.")
def convert(source: str, output: Path, recipe: str | None, bits: str | None, group_size: str | None,
            no_quantize: bool, dtype: str | None, force: bool, layout: str) -> None:
    """Convert a Hugging Face EmbeddingGemma checkpoint (folder or hub id) into an MLX model folder.

    The default recipe, q4-mixed, keeps most weights at 4 bits (GPTQ-rounded on calibration text that
    ships with Python) and the most sensitive ones at 8. Recipes: q4-mixed, q4, q4-gptq, q8.

    SOURCE is a local sentence-transformers folder, or a hub id such as google/embeddinggemma-300m
    (downloaded only then; needs `pip install 'mlx-embedgemma[hub]'`).
    """
    from .convert import OutputExistsError, OutputWriteError, SourceError
    from .convert import convert as run

    if dtype and not no_quantize:
        raise click.UsageError("--dtype applies to full-precision output: add --no-quantize")
    if no_quantize and (recipe or bits or group_size):
        raise click.UsageError("--no-quantize cannot be combined with --recipe, --bits or --group-size")
    if recipe and (bits or group_size):
        raise click.UsageError("give --recipe or --bits/--group-size, not both")
    try:
        report = run(
            source, output, recipe=recipe, bits=bits and int(bits), group_size=group_size and int(group_size),
            quantize=not no_quantize,
            dtype=dtype or "float32", force=force, layout=layout, log=lambda m: click.echo(m, err=True),
        )
    except (SourceError, OutputExistsError, OutputWriteError, PermissionError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {report.output} ({report.storage}, {report.size_bytes / 1e6:.1f} MB)")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--input", "input_file", type=click.File("r", encoding="utf-8"),
              help="File of texts ('-' for stdin): one per line, or JSONL (.jsonl) with a 'text' field.")
@click.option("--prompt-name", default=None, help="Task prompt, e.g. query, document, STS (see `info MODEL`).")
@click.option("--dim", type=click.IntRange(1), default=None,
              help="Matryoshka size: 768, 512, 256 or 128 for EmbeddingGemma-300m (see `info MODEL`); default the full size.")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="Write .npy (one float32 matrix) or JSONL ({index, embedding} per line); default JSONL on stdout.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted JSONL --output: keep its complete lines, skip those texts, append the rest.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
def embed(model: Path, texts: tuple[str, ...], input_file, prompt_name: str | None, dim: int | None,
          output: Path | None, resume: bool, batch_size: int) -> None:
    """Embed TEXTs, or the texts of --input, or of stdin when neither is given.

    JSONL is written as it is computed, one complete line per text, so a killed run leaves only whole
    lines, which `--resume` continues from.
    """
    import numpy as np

    from .loading import load

    if texts and input_file:
        raise click.UsageError("give TEXT arguments or --input, not both")
    as_npy = output is not None and output.suffix == ".npy"
    if resume and (output is None or as_npy):
        raise click.UsageError("--resume continues a JSONL --output file; give --output FILE.jsonl")
    try:
        m = load(model)
        m.prompt_prefix(prompt_name, None)  # fail on an unknown prompt or size before any work
        dim = m.check_dim(dim) if dim is not None else m.embedding_dim
    except (FileNotFoundError, ImportError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    source = _checked_args(texts) if texts else _read_texts(input_file or click.open_file("-", encoding="utf-8"))
    done = 0
    if resume and output.exists():
        done, last = _completed(output, dim)
        _check_resume_point(m, source, output, done, last, prompt_name, dim)
    vectors = m.encode_iter(source, prompt_name=prompt_name, dim=dim, batch_size=batch_size, chunk_size=CHUNK)
    with click.progressbar(vectors, label="embedding", file=sys.stderr, hidden=not sys.stderr.isatty()) as bar:
        if as_npy:
            rows = list(bar)
            _save_npy(output, np.stack(rows) if rows else np.zeros((0, dim), np.float32))
            count = len(rows)
        else:
            count = _write_jsonl(bar, output, done)
    if output:
        resumed = f" (resumed after {done})" if done else ""
        click.echo(f"wrote {count} embeddings of {dim} dims to {output}{resumed}", err=True)


def _write_jsonl(vectors: Iterator, output: Path | None, start: int) -> int:
    """Each line goes out in one write() as soon as its vector exists: a kill can only cut between lines."""
    f = output.open("ab" if start else "wb", buffering=0) if output else None
    sink = f or sys.stdout.buffer
    count = 0
    try:
        for count, row in enumerate(vectors, 1):
            line = json.dumps({"index": start + count - 1, "embedding": [round(float(v), 7) for v in row]}) + "\n"
            sink.write(line.encode("utf-8"))
            sink.flush()
    finally:
        if f is not None:
            f.close()
    return count


def _save_npy(output: Path, matrix) -> None:
    """All or nothing: a killed run leaves the previous file (or none), never a truncated matrix."""
    import numpy as np

    tmp = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            np.save(f, matrix)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def _completed(path: Path, dim: int) -> tuple[int, list[float] | None]:
    """How many texts to keep from a JSONL output, and the last kept vector; the rest of the file is cut off.

    Only whole chunks are kept: the resumed run then embeds the same batches as an uninterrupted one, so
    the file ends up byte-identical to it (an incomplete last line is dropped with the partial chunk).
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
                raise click.ClickException(
                    f"{path}, line {n} is not an `embed` record; refusing to resume (choose another --output)"
                ) from None
            if index != count:
                raise click.ClickException(
                    f"{path}, line {n} has index {index}, expected {count}: not the output of one `embed` run; refusing to resume"
                )
            if not isinstance(vector, list) or len(vector) != dim:
                raise click.ClickException(
                    f"{path} holds {len(vector) if isinstance(vector, list) else '?'}-d embeddings, this run makes {dim}-d: "
                    "resume with the same --dim, model and --prompt-name"
                )
            count += 1
            if count % CHUNK == 0:
                kept, end, last = count, f.tell(), vector
    if path.stat().st_size > end:
        os.truncate(path, end)
        click.echo(f"{path}: kept the first {kept} of {count} complete lines (whole chunks of {CHUNK})", err=True)
    return kept, last


def _check_resume_point(m, source: Iterator[str], output: Path, done: int, last, prompt_name: str | None, dim: int) -> None:
    """Skip the ``done`` texts already embedded, and check the last of them embeds to the stored vector."""
    import numpy as np

    seen, text = 0, None
    for seen, text in enumerate(itertools.islice(source, done), 1):
        pass
    if seen < done:
        raise click.ClickException(f"{output} holds {done} embeddings but the input has only {seen} texts: it belongs to another input")
    if done:
        now = m.encode([text], prompt_name=prompt_name, dim=dim)[0]
        # Stored values are rounded to 7 decimals; batch composition moves them by ~1e-7.
        if np.max(np.abs(now - np.asarray(last, np.float32))) > 1e-4:
            raise click.ClickException(
                f"{output}: line {done} is not what text {done - 1} embeds to now, so it was written with another model, "
                "prompt or input; refusing to append (use the same options, or start a new --output)"
            )


def _checked_args(texts: tuple[str, ...]) -> Iterator[str]:
    for i, text in enumerate(texts, 1):
        try:
            check_text(text, f"argument {i}")
        except (TypeError, ValueError) as e:
            raise click.ClickException(str(e)) from None
        yield text


def _read_texts(stream) -> Iterator[str]:
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
                    raise click.ClickException(f"{name}, line {n}: expected a JSON object with a 'text' field") from None
                if not isinstance(line, str):
                    raise click.ClickException(f"{name}, line {n}: 'text' must be a string")
            check_text(line, f"{name}, line {n}")
            yield line
    except UnicodeDecodeError as e:
        # Decoding runs ahead in blocks, so the line is unknown.
        raise click.ClickException(f"{name} is not valid UTF-8 ({e.reason}); convert the file to UTF-8") from None
    except ValueError as e:  # a lone surrogate, e.g. a JSON "\\ud800" escape
        raise click.ClickException(str(e)) from None


class _BenchGroup(click.Group):
    """`bench MODEL ...` runs the harness; `bench report FILES ...` renders recorded results."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_BenchGroup)
def bench() -> None:
    """Benchmark a model (`bench MODEL`), or render result files (`bench report FILES...`)."""


def _shared_dir() -> Path | None:
    """../shared (evaluation data, reference embeddings) beside the checkout or the working directory."""
    candidates = [os.environ.get("EMBEDGEMMA_SHARED"), Path.cwd().parent / "shared", Path.cwd() / "shared",
                  Path(__file__).resolve().parents[2] / "shared"]
    return next((Path(c) for c in candidates if c and (Path(c) / "eval").is_dir()), None)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@bench.command("run")
@click.argument("model", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--device", type=click.Choice(["cpu", "gpu", "all"]), default="all", show_default=True,
              help="gpu: Metal on a Mac, CUDA on Linux; all: every device MLX has here.")
@click.option("--dims", default=None, help="Matryoshka sizes to measure [default: all of the model's: 768,512,256,128].")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Append JSONL records here.")
@click.option("--quick", is_flag=True, help="Fewer repetitions (30 query runs, one timed call per batch); quality only if cached.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads for every runner [default: all cores].")
@click.option("--peers", default="auto", show_default=True,
              help="Comma list of sentence-transformers, llama.cpp; 'auto': those installed; 'none'.")
@click.option("--st-model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Hugging Face folder for the sentence-transformers peer [default: $EMBEDGEMMA_SOURCE].")
@click.option("--gguf", "ggufs", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="GGUF file for the llama.cpp peer (repeatable; see benchmarks/README.md to make them).")
@click.option("--shared", "shared", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder with eval/ and reference/ [default: ../shared or $EMBEDGEMMA_SHARED].")
@click.option("--no-quality", is_flag=True, help="Skip STS and retrieval scores.")
def bench_run(model: Path, device: str, dims: str | None, output: Path | None, quick: bool, threads: int | None, peers: str,
              st_model: Path | None, ggufs: tuple[Path, ...], shared: Path | None, no_quality: bool) -> None:
    """Latency, throughput, memory, downstream cost and quality of MODEL per dim and device, beside its peers."""
    from .benchmarks import harness
    from .loading import load

    try:
        m = load(model)
        sizes = [m.check_dim(int(d)) for d in dims.split(",")] if dims else list(m.dims)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--dims") from None
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    available = harness.available_devices()
    devices = available if device == "all" else [device]
    if device == "gpu" and "gpu" not in available:
        raise click.UsageError("MLX has no GPU here (Metal on Apple silicon, CUDA with mlx[cuda13]); use --device cpu")

    installed = {"sentence-transformers": _installed("sentence_transformers"), "llama.cpp": _installed("llama_cpp")}
    if peers == "auto":
        chosen = [p for p, ok in installed.items() if ok]
    elif peers == "none":
        chosen = []
    else:
        chosen = [p.strip() for p in peers.split(",") if p.strip()]
        for p in chosen:
            if p not in installed:
                raise click.BadParameter(f"unknown peer {p!r}; known: {', '.join(installed)}", param_hint="--peers")
            if not installed[p]:
                raise click.UsageError(f"peer {p} is not installed: see benchmarks/README.md")
    st_model = st_model or (Path(os.environ["EMBEDGEMMA_SOURCE"]) if os.environ.get("EMBEDGEMMA_SOURCE") else None)
    skipped = []
    if "sentence-transformers" in chosen and st_model is None:
        skipped.append("sentence-transformers (give --st-model, the Hugging Face folder)")
    if "llama.cpp" in chosen and not ggufs:
        skipped.append("llama.cpp (give --gguf FILE)")
    shared = shared or _shared_dir()
    if shared is None:
        skipped.append("quality and cosine to the reference (../shared not found; give --shared)")
    elif not no_quality and not (shared / "eval").is_dir():
        skipped.append(f"quality ({shared / 'eval'} not found)")
    for what in skipped:
        click.echo(f"skipping {what}", err=True)

    settings = harness.Settings.quick() if quick else harness.Settings()
    run = harness.Run(
        model=model.expanduser().resolve(), devices=devices, dims=sizes, output=output, settings=settings,
        threads=threads or os.cpu_count() or 1, peers=chosen, st_model=st_model, ggufs=list(ggufs),
        data_dir=shared / "eval" if shared and (shared / "eval").is_dir() else None,
        reference_dir=shared / "reference" if shared and (shared / "reference").is_dir() else None,
        cache_dir=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlx-embedgemma" / "bench",
        quality=not no_quality, quality_from_cache_only=quick,
    )
    try:
        records = run.execute()
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{len(records)} records" + (f" appended to {output}" if output else ""), err=True)


@bench.command("report")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write README.md and PNG plots into this folder [default: print the tables].")
@click.option("--no-plots", is_flag=True, help="Tables only (no matplotlib needed).")
def bench_report(files: tuple[Path, ...], output: Path | None, no_plots: bool) -> None:
    """Markdown tables and PNG plots (latency, throughput, memory, quality per dim and device) from result FILES."""
    from .benchmarks import report

    try:
        text = report.write(list(files), output, with_plots=not no_plots)
    except (ValueError, RuntimeError) as e:
        raise click.ClickException(str(e)) from None
    if output is None:
        click.echo(text)
    else:
        click.echo(f"wrote {output / 'README.md'}", err=True)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; anything but loopback exposes the server.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--model-id", default=None, help="Model name clients send [default: the folder's name].")
@click.option("--dim", type=click.IntRange(1), default=None, help="Matryoshka size when a request gives no `dimensions` [default: full].")
@click.option("--prompt-name", default=None, help="Task prompt when a request names none (by `prompt_name` or a `MODEL:PROMPT` alias).")
@click.option("--max-batch-size", type=click.IntRange(1), default=32, show_default=True, help="Texts per batch.")
@click.option("--batch-wait-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="How long a batch waits for more requests once one has arrived (under concurrent load: up to "
                   "a tenth of a forward pass, at most 100 ms, unless --fixed-wait).")
@click.option("--fixed-wait", is_flag=True, help="Always wait exactly --batch-wait-ms.")
@click.option("--max-queue", type=click.IntRange(1), default=256, show_default=True, help="Requests waiting before 429.")
@click.option("--max-inputs", type=click.IntRange(1), default=2048, show_default=True, help="Texts per request before 413.")
@click.option("--max-request-tokens", type=click.IntRange(1), default=65536, show_default=True,
              help="Tokens per request (prompts included) before 413.")
@click.option("--truncate", is_flag=True, help="Cut texts over the model's context (reported per response) instead of answering 400.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info", show_default=True)
@click.option("--no-access-log", is_flag=True, help="Do not log every request.")
def serve(model: Path, host: str, port: int, model_id: str | None, dim: int | None, prompt_name: str | None,
          max_batch_size: int, batch_wait_ms: float, max_queue: int, max_inputs: int, max_request_tokens: int,
          truncate: bool, log_level: str, no_access_log: bool, fixed_wait: bool) -> None:
    """Serve MODEL over an OpenAI-compatible API: POST /v1/embeddings, GET /v1/models, GET /health.

    Needs `pip install 'mlx-embedgemma[serve]'` (Starlette and uvicorn).
    """
    try:
        from . import server
    except ImportError as e:
        raise click.ClickException(f"the server needs Starlette and uvicorn ({e}): pip install 'mlx-embedgemma[serve]'") from None
    from .loading import load

    try:
        m = load(model)
        config = server.ServerConfig(
            model_id=model_id or Path(model).expanduser().resolve().name, max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms, max_queue=max_queue, max_inputs=max_inputs,
            max_request_tokens=max_request_tokens, default_dim=dim, default_prompt_name=prompt_name, truncate=truncate,
            adaptive_wait=not fixed_wait,
        )
        server.check_config(m, config)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if not server.is_loopback(host):
        click.echo(f"warning: binding to {host}: anyone who can reach this machine can use the server "
                   "(it has no authentication); use --host 127.0.0.1 to keep it local", err=True)
    click.echo(f"serving {config.model_id} (aliases: {', '.join(list(server.model_aliases(m, config.model_id))[1:4])}, ...) "
               f"on http://{host}:{port}/v1", err=True)
    server.serve(m, config, host=host, port=port, log_level=log_level, access_log=not no_access_log)


MODEL_ENV = "MLX_EMBEDGEMMA_MODEL"


def _index_model(model: Path | None, store) -> Path:
    """--model, else $MLX_EMBEDGEMMA_MODEL, else the folder the store was made with."""
    if model is not None:
        return model
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV])
    stored = store.meta.get("model_path")
    if stored:
        return Path(stored)
    raise click.UsageError(f"give the model folder with --model (or set ${MODEL_ENV}); the store remembers it afterwards")


def _shown(path: str) -> str:
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    except ValueError:  # another drive (Windows)
        return path


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The SQLite store (created if missing).")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help=f"Model folder [default: ${MODEL_ENV}, else the one the store was made with].")
@click.option("--dim", type=click.IntRange(1), default=None,
              help="Matryoshka size of the stored vectors (of the first pass, for int8 and binary) [default: full, or the store's].")
@click.option("--store", "kind", type=click.Choice(["float32", "int8", "binary"]), default=None,
              help="float32: exact search. int8 / binary: a 4x / 32x smaller first pass, its best candidates rescored "
                   "with full-size float vectors read from disk [default: float32, or the store's].")
@click.option("--rebuild", is_flag=True, help="Re-index everything into a new store, which replaces the old one once complete.")
@click.option("--chunk-tokens", type=click.IntRange(16), default=None,
              help="Largest chunk, in the model's tokens (prompt excluded) [default: 400 or the model's limit, or the store's].")
@click.option("--overlap-tokens", type=click.IntRange(0), default=None,
              help="Paragraphs repeated between neighbouring chunks, in tokens [default: 50, or the store's].")
@click.option("--ext", "extensions", default=",".join(e.lstrip(".") for e in DEFAULT_EXTENSIONS),
              show_default=True, help="File name endings to index, comma separated.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--watch", is_flag=True, help="Then keep the store current as files change, until Ctrl-C (needs the [search] extra).")
@click.option("--debounce", type=click.FloatRange(0.05), default=1.0, show_default=True,
              help="With --watch: seconds without changes before updating, so a burst of saves is embedded once.")
def index(folder: Path, db: Path, model: Path | None, dim: int | None, kind: str | None, rebuild: bool,
          chunk_tokens: int | None, overlap_tokens: int | None, extensions: str, batch_size: int, watch: bool,
          debounce: float) -> None:
    """Index the text and Markdown files of FOLDER into --db for `search` (again: only what changed).

    Markdown is cut by headings, then paragraphs; plain text by paragraphs. Unchanged files are skipped,
    changed ones re-embedded, renamed ones moved, deleted ones removed. Everything stays on this machine.
    """
    from .loading import load
    from .search import SearchIndex, StoreError
    from .search import rebuild as rebuild_aside

    exts = [e.strip() for e in extensions.split(",") if e.strip()]

    def update(target: SearchIndex, **settings):
        return target.index_folder(folder, m, extensions=exts, batch_size=batch_size,
                                  progress=lambda p: click.echo(f"  embedding {_shown(p)}", err=True), **settings)

    settings = {"dim": dim, "store": kind, "chunk_tokens": chunk_tokens, "overlap_tokens": overlap_tokens}
    try:
        with SearchIndex(db) as store:
            m = load(_index_model(model, store))
            if not rebuild:
                report = update(store, **settings)
        if rebuild:
            report = rebuild_aside(db, lambda new: update(new, **settings))
        _print_index_report(report, db, m.max_seq_length)
        if watch:
            from .search.watch import watch_folder

            click.echo(f"watching {_shown(str(folder))} (Ctrl-C to stop)", err=True)

            def update_once():
                with SearchIndex(db) as store:
                    return update(store)

            watch_folder(folder, update_once, lambda r: _print_index_report(r, db, m.max_seq_length), debounce_s=debounce,
                         extensions=exts)
    except (StoreError, FileNotFoundError, ValueError, ImportError) as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        click.echo("stopped watching; the store is current up to the last update", err=True)


def _print_index_report(report, db: Path, max_seq_length: int) -> None:
    for path, why in report.skipped:
        click.echo(f"skipped {_shown(path)}: {why}", err=True)
    for old, new in report.renamed:
        click.echo(f"renamed {_shown(old)} -> {_shown(new)}", err=True)
    if report.truncated:
        click.echo(f"{report.truncated} chunks were longer than the model's {max_seq_length} tokens and were cut to it: "
                   "re-index with --rebuild (chunks are then measured in tokens)", err=True)
    click.echo(
        f"{len(report.added)} new, {len(report.updated)} changed, {len(report.renamed)} renamed, "
        f"{report.unchanged + report.touched} unchanged, {len(report.removed)} removed, {len(report.skipped)} skipped; "
        f"{report.chunks_embedded} chunks embedded; "
        f"{report.files_total} files, {report.chunks_total} chunks in {_shown(str(db))} ({report.seconds:.1f} s)"
    )


@main.command()
@click.argument("query")
@click.option("--db", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="A store made by `index`.")
@click.option("-k", "--top-k", "k", type=click.IntRange(1), default=10, show_default=True, help="How many chunks to show.")
@click.option("--mode", type=click.Choice(["hybrid", "vector", "keyword"]), default="hybrid", show_default=True,
              help="vector: by meaning; keyword: by words (BM25); hybrid: both, fused by reciprocal rank.")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help=f"Model folder [default: ${MODEL_ENV}, else the one the store was made with].")
@click.option("--prompt-name", default="query", show_default=True, help="Task prompt of the query (documents have `document`).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per result, for scripts.")
def search(query: str, db: Path, k: int, mode: str, model: Path | None, prompt_name: str, as_json: bool) -> None:
    """Search a store made by `index`: rank, score, file:line, heading and a snippet."""
    from .loading import load
    from .search import SearchIndex, StoreError

    try:
        with SearchIndex(db) as store:
            m = load(_index_model(model, store)) if mode != "keyword" else None
            results = store.search(m, query, k=k, mode=mode, prompt_name=prompt_name)
    except (StoreError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    for note in results.notes:
        click.echo(f"note: {note}", err=True)
    for h in results.hits:
        if as_json:
            click.echo(json.dumps({"rank": h.rank, "score": round(h.score, 6), "path": h.path, "line": h.start_line,
                                   "chunk": h.ordinal, "heading": h.heading, "text": h.text}, ensure_ascii=False))
            continue
        snippet = " ".join(h.text.split())
        snippet = snippet if len(snippet) <= 200 else snippet[:197] + "..."
        click.echo(f"{h.rank:>3}  {h.score:.4f}  {_shown(h.path)}:{h.start_line}" + (f"  [{h.heading}]" if h.heading else ""))
        click.echo(f"     {snippet}")
    if not results.hits:
        click.echo("no chunk matches" if mode == "keyword" else "the store holds no chunks", err=True)


@main.command()
@click.option("--db", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="A store made by `index`.")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help=f"Model folder [default: ${MODEL_ENV}, else the one the store was made with].")
def mcp(db: Path, model: Path | None) -> None:
    """Serve the store's search to AI agents over the Model Context Protocol (stdio; needs the [mcp] extra)."""
    from .loading import load
    from .search import SearchIndex, StoreError

    try:
        from .search.mcp_server import serve

        with SearchIndex(db) as store:
            model_path = _index_model(model, store)
        serve(db, load(model_path))
    except (StoreError, FileNotFoundError, ValueError, ImportError) as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.argument("model", type=click.Path(path_type=Path), required=False)
def info(model: Path | None) -> None:
    """Versions, backend and device, BLAS in use, and a summary of MODEL if given."""
    import mlx.core as mx
    import numpy as np
    import sentencepiece

    rows = [
        ("mlx-embedgemma", __version__),
        ("python", f"{platform.python_version()} ({platform.system()} {platform.machine()})"),
        ("mlx", mx.__version__),
        ("numpy", np.__version__),
        ("sentencepiece", sentencepiece.__version__),
        ("device", str(mx.default_device())),
        ("metal", "available" if mx.metal.is_available() else "not available"),
        ("cuda", "available" if hasattr(mx, "cuda") and mx.cuda.is_available() else "not available"),
        ("blas", _blas.status),
        ("cblas_sgemm from", _blas.sgemm_provider() or "MLX's bundled BLAS" if sys.platform == "linux" else "Accelerate"),
    ]
    if model is not None:
        from .loading import load
        from .precision import describe

        try:
            m = load(model)
        except (FileNotFoundError, ImportError, ValueError) as e:
            raise click.ClickException(str(e)) from None
        size = sum(f.stat().st_size for f in Path(model).expanduser().iterdir() if f.is_file())
        rows += [
            ("model", str(m.path)),
            ("storage", describe(m.config)),
            ("size on disk", f"{size / 1e6:.1f} MB"),
            ("dims", ", ".join(map(str, m.dims))),
            ("max tokens", str(m.max_seq_length)),
            ("prompts", ", ".join(sorted(m.prompts))),
        ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
